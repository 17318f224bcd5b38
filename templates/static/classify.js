/* LinearScope classifier pages: draws the maps of data/<run>/classify.js and reads out the charts.
 *
 * LinearScope.classifyData(d) registers the page's data (classic script, works from file://);
 * classifyInit() decodes each map with LinearScope.util (blobs of sitegen/tiles.py) and draws it
 * with the diverging colormap, dims the pixels that do not vote for a label, and wires the label
 * selector and the hover readouts of the bar charts. Test hooks: window.__linearscope.classify
 * (the data, maps decoded as arrays in .decoded) and .ready once everything is drawn.
 */
(function () {
  "use strict";
  var LS = window.LinearScope, U = LS.util, hooks = U.hooks;
  var data = null;
  LS.classifyData = function (d) { data = d; hooks.classify = d; };

  function drawMap(canvas, values, H, W) {  // symmetric diverging colours, ±max|value|
    var m = 0, i;
    for (i = 0; i < values.length; i++) if (Math.abs(values[i]) > m) m = Math.abs(values[i]);
    var lut = U.lut("rdbu"), tp = U.tailParams({ t: "lin" });
    canvas.width = W; canvas.height = H;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H);
    for (i = 0; i < H * W; i++) {
      var t = U.tmap(values[i], m, tp), k = Math.round((t + 1) / 2 * 255);
      img.data[4 * i] = lut[3 * k]; img.data[4 * i + 1] = lut[3 * k + 1];
      img.data[4 * i + 2] = lut[3 * k + 2]; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  function drawVotes(canvas, votes, label, H, W) {  // transparent where the pixel votes for label
    canvas.width = W; canvas.height = H;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H);
    for (var i = 0; i < H * W; i++) {
      img.data[4 * i + 3] = votes[i] === label ? 0 : 200;
    }
    ctx.putImageData(img, 0, 0);
  }
  function decode(pair, precision) { return U.decode(pair[0], pair[1], precision); }

  function readout(section, text) {
    var el = section.querySelector(".readout");
    if (el) el.textContent = text;
  }

  LS.classifyInit = function () {
    if (!data) { hooks.errors.push("no classifier data"); hooks.ready = true; return; }
    var H = data.shape[0], W = data.shape[1], jobs = [];
    data.panels.forEach(function (p) {
      var section = document.querySelector('section.cpanel[data-panel="' + p.key + '"]');
      if (!section) { hooks.errors.push("missing panel " + p.key); return; }
      p.decoded = { maps: [], votes: null };
      p.maps.forEach(function (m, i) {
        ["row", "discussion"].forEach(function (kind) {
          jobs.push(decode(m[kind], data.precision).then(function (v) {
            p.decoded.maps[i] = p.decoded.maps[i] || {};
            p.decoded.maps[i][kind] = Array.from(v);
            drawMap(section.querySelector('canvas.cmap[data-kind="' + kind + '"][data-i="' + i + '"]'), v, H, W);
          }));
        });
      });
      jobs.push(decode(p.votes, "float32").then(function (v) {
        p.decoded.votes = Array.from(v);
        section.querySelectorAll("canvas.cvote").forEach(function (c) {
          drawVotes(c, v, +c.getAttribute("data-label"), H, W);
        });
      }));
      var sel = section.querySelector("select.clabel");
      sel.addEventListener("change", function () {
        section.querySelectorAll(".chart").forEach(function (c) {
          c.hidden = c.getAttribute("data-i") !== sel.value;
        });
      });
      section.querySelectorAll("svg.bars g.bar").forEach(function (g) {
        g.addEventListener("mouseenter", function () {
          var v = +g.getAttribute("data-value"), title = g.querySelector("title").textContent;
          g.parentNode.querySelectorAll("g.bar.on").forEach(function (o) { o.classList.remove("on"); });
          g.classList.add("on");
          readout(section, title.replace(/^[^:]*/, g.getAttribute("data-term")) +
                  " — exact " + v);
        });
      });
    });
    Promise.all(jobs).then(function () { hooks.ready = true; }, function (e) {
      hooks.errors.push(String(e)); hooks.ready = true;
    });
  };

  LS.summaryInit = function () {
    document.querySelectorAll("svg.band circle.pt").forEach(function (c) {
      c.addEventListener("mouseenter", function () {
        var el = document.querySelector(".readout");
        el.textContent = c.getAttribute("data-series") + " " + c.querySelector("title").textContent;
      });
    });
    hooks.ready = true;
  };
})();
