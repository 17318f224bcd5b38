/* LinearScope SVD pages (sitegen/svd_page.py): singular values, eigen-inputs, eigen-outputs.
 *
 * Classic script, works from file://. data/<run>/svd/meta.js calls LinearScope.svdRun(meta) with
 * the exact σ and measured residuals; data/<run>/svd/<i>.js, injected when triplet i is shown,
 * calls LinearScope.svdTriplet(run, i, {v: [scale, blob], u: [scale, blob]}) — blobs written by
 * sitegen/tiles.py (encode_block) and decoded with LinearScope.util, like the explorer's filters.
 * The gallery (templates/_svd_gallery.html) shows every triplet as build-time thumbnails; a click
 * (or Enter / Space on a focused thumbnail, arrows to move) selects that triplet here.
 * For tests and scripts: window.__linearscope.svd = {ready, i, shown: {run: {i, v, u, ...}},
 * galleryFocus: {run, i} of the focused thumbnail or null}.
 */
(function () {
  "use strict";
  var LS = window.LinearScope, U = LS.util, hooks = U.hooks;
  var H = hooks.svd = { ready: false, i: 0, shown: {}, errors: [], renders: 0 };
  var metas = {}, trips = {}, decoded = {}, root = "", ids = [], sections = {};
  var state = { i: 0, c: "rgb", cm: "rdbu", n: "v" };
  var ctl = {}, plot = null, token = 0;
  var COLORS = ["#0b5cad", "#b2182b", "#1b7837", "#762a83", "#e08214", "#35978f"];

  LS.svdRun = function (meta) { metas[meta.id] = meta; };
  LS.svdTriplet = function (run, i, payload) {
    var w = trips[run + "/" + i] || (trips[run + "/" + i] = {});
    w.data = payload;
    if (w.resolve) w.resolve(payload);
  };

  // -- data ------------------------------------------------------------------------------------
  function loadTriplet(run, i) {
    var key = run + "/" + i, w = trips[key] || (trips[key] = {});
    if (w.promise) return w.promise;
    if (w.data) return (w.promise = Promise.resolve(w.data));
    w.promise = new Promise(function (res, rej) { w.resolve = res; w.reject = rej; });
    var s = document.createElement("script");
    s.src = root + "data/" + encodeURIComponent(run) + "/svd/" + i + ".js";
    s.async = true;
    s.onload = function () { if (!w.data) w.reject(new Error("triplet " + s.src + " did not register")); };
    s.onerror = function () { delete trips[key]; w.reject(new Error("cannot load " + s.src)); };
    document.head.appendChild(s);
    return w.promise;
  }
  function getTriplet(meta, i) {
    var key = meta.id + "/" + i;
    if (!decoded[key]) {
      decoded[key] = loadTriplet(meta.id, i).then(function (p) {
        return Promise.all([U.decode(p.v[0], p.v[1], meta.precision),
          U.decode(p.u[0], p.u[1], meta.precision)]).then(function (d) {
          return { v: d[0], u: d[1], vScale: p.v[0], uScale: p.u[0] };
        });
      }, function (e) { delete decoded[key]; throw e; });
    }
    return decoded[key];
  }

  // -- formatting ------------------------------------------------------------------------------
  function fmtSigma(s) { return s === null ? "–" : Number(s).toPrecision(6); }
  function fmtRes(r) { return r === null ? "–" : Number(r).toExponential(2); }
  function kmax() { return Math.max.apply(null, ids.map(function (id) { return metas[id].k; })); }
  function $(sel, el) { return (el || document).querySelector(sel); }
  function el(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  // -- eigen-images ------------------------------------------------------------------------------
  function paneSide() {
    var v = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--pane"));
    return v > 0 ? v : 288;
  }
  /* One signed vector (C, H, W) into a canvas: an RGB composite (mid-grey = 0) for 3 channels
   * with channel "rgb", else one channel through the diverging colormap; ±max |entry| of the
   * whole vector ("v") or of the channel shown ("c"). Returns the max used. */
  function drawImage(canvas, data, shape) {
    var C = shape[0], h = shape[1], w = shape[2], n = h * w;
    var rgb = C === 3 && state.c === "rgb";
    var ch = rgb ? 0 : Math.min(state.c === "rgb" ? 0 : +state.c, C - 1);
    var lo = (rgb || state.n === "v") ? 0 : ch * n, hi = (rgb || state.n === "v") ? C * n : (ch + 1) * n;
    var m = 0;
    for (var j = lo; j < hi; j++) { var a = Math.abs(data[j]); if (a > m) m = a; }
    canvas.width = w; canvas.height = h;
    var z = paneSide() / Math.max(h, w);
    canvas.style.width = Math.round(w * z) + "px"; canvas.style.height = Math.round(h * z) + "px";
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h), d = img.data;
    var L = U.lut(state.cm), tp = { kind: "lin" };
    for (var p = 0; p < n; p++) {
      if (rgb) {
        for (var c = 0; c < 3; c++) d[4 * p + c] = Math.round(127.5 + 127.5 * U.tmap(data[c * n + p], m, tp));
      } else {
        var k = Math.round((U.tmap(data[ch * n + p], m, tp) + 1) / 2 * 255) * 3;
        d[4 * p] = L[k]; d[4 * p + 1] = L[k + 1]; d[4 * p + 2] = L[k + 2];
      }
      d[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return m;
  }
  /* A vector model's eigen-output: its ten largest entries by magnitude, with the class names. */
  function drawBars(list, data, labels) {
    var idx = [];
    for (var j = 0; j < data.length; j++) idx.push(j);
    idx.sort(function (a, b) { return Math.abs(data[b]) - Math.abs(data[a]) || a - b; });
    var m = Math.abs(data[idx[0]]) || 1;
    list.textContent = "";
    idx.slice(0, 10).forEach(function (j) {
      var li = el("li", data[j] < 0 ? "neg" : "pos", list);
      var bar = el("span", "bar", li);
      bar.style.width = Math.round(100 * Math.abs(data[j]) / m) + "%";
      el("span", "lab", li, (labels[j] !== undefined ? labels[j] : "class " + j) + ": " + U.fmt(data[j]));
    });
  }

  // -- the spectrum ------------------------------------------------------------------------------
  var NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var a in attrs) e.setAttribute(a, attrs[a]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function buildPlot(host) {
    var W = 760, Hh = 250, pad = { l: 64, r: 56, t: ids.length > 1 ? 28 : 12, b: 34 };
    var K = kmax(), pos = [];
    ids.forEach(function (id) { metas[id].sigma.forEach(function (s) { if (s > 0) pos.push(s); }); });
    var smax = pos.length ? Math.max.apply(null, pos) : 1, smin = pos.length ? Math.min.apply(null, pos) : 1;
    // log range fitted to the data, with 1-2-5 ticks when it spans few decades
    var a0 = Math.log10(smin), a1 = Math.log10(smax), span = Math.max(a1 - a0, 0.3);
    var l0 = a0 - 0.08 * span, l1 = a1 + 0.08 * span;
    var pw = W - pad.l - pad.r, ph = Hh - pad.t - pad.b;
    function X(i) { return pad.l + (K === 1 ? 0.5 : i / (K - 1)) * pw; }
    function Y(s) { var l = s > 0 ? Math.log10(s) : l0; return pad.t + (1 - (l - l0) / (l1 - l0)) * ph; }
    var root_ = svg("svg", { viewBox: "0 0 " + W + " " + Hh, width: W, height: Hh, "class": "svd-svg" }, host);
    svg("rect", { x: pad.l, y: pad.t, width: pw, height: ph, "class": "frame" }, root_);
    var mant = span < 1 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : (span <= 2 ? [1, 2, 5] : [1]);
    var dstep = Math.max(1, Math.ceil(span / 6)), ticks = 0;
    for (var e = Math.floor(l0); e <= Math.ceil(l1); e += dstep) {
      mant.forEach(function (mm) {
        var v = mm * Math.pow(10, e), lv = Math.log10(v);
        if (lv < l0 || lv > l1) return;
        var y = Y(v);
        ticks++;
        svg("line", { x1: pad.l, x2: pad.l + pw, y1: y, y2: y, "class": "grid" }, root_);
        svg("text", { x: pad.l - 6, y: y + 4, "text-anchor": "end", "class": "tick" }, root_).textContent = U.fmt(v);
      });
    }
    if (ticks < 2 && pos.length) {  // a narrow spectrum: label its extremes instead
      if (Y(smin) - Y(smax) < 14) {  // too close for two labels: one, above the points
        svg("text", { x: pad.l + pw - 4, y: Y(smax) - 10, "text-anchor": "end", "class": "tick" },
          root_).textContent = "σ in " + fmtSigma(smin) + " … " + fmtSigma(smax);
      } else {
        [smin, smax].forEach(function (v) {
          svg("text", { x: pad.l + pw + 4, y: Y(v) + 4, "text-anchor": "start", "class": "tick" },
            root_).textContent = fmtSigma(v);
        });
      }
    }
    var xt = [0, K - 1];
    for (var q = 1; q < 5; q++) xt.push(Math.round(q * (K - 1) / 5));
    xt.filter(function (v, j, a) { return a.indexOf(v) === j; }).forEach(function (i) {
      svg("text", { x: X(i), y: Hh - pad.b + 16, "text-anchor": "middle", "class": "tick" }, root_).textContent = String(i + 1);
    });
    svg("text", { x: pad.l + pw / 2, y: Hh - 4, "text-anchor": "middle", "class": "axis" }, root_).textContent = "i";
    svg("text", { x: 14, y: pad.t + ph / 2, "text-anchor": "middle", "class": "axis",
      transform: "rotate(-90 14 " + (pad.t + ph / 2) + ")" }, root_).textContent = "σ_i (log)";
    var cur = svg("line", { y1: pad.t, y2: pad.t + ph, "class": "cur" }, root_);
    ids.forEach(function (id, r) {
      var m = metas[id], col = COLORS[r % COLORS.length];
      svg("polyline", { points: m.sigma.map(function (s, i) { return X(i) + "," + Y(s); }).join(" "),
        stroke: col, "class": "series" }, root_);
      m.sigma.forEach(function (s, i) {
        var c = svg("circle", { cx: X(i), cy: Y(s), r: 4, fill: s > 0 ? col : "#fff", stroke: col,
          "class": "pt", "data-run": id, "data-i": i }, root_);
        svg("title", {}, c).textContent = (ids.length > 1 ? id + ": " : "") + "σ_" + (i + 1) + " = " + fmtSigma(s);
      });
      if (ids.length > 1) {  // a legend row above the plot
        var lx = pad.l + r * Math.floor(pw / ids.length);
        svg("circle", { cx: lx + 5, cy: 12, r: 4, fill: col }, root_);
        svg("text", { x: lx + 14, y: 16, fill: col, "class": "legend" }, root_).textContent = id;
      }
    });
    // hovering anywhere over the plot selects the nearest index
    root_.addEventListener("mousemove", function (ev) {
      var b = root_.getBoundingClientRect(), x = (ev.clientX - b.left) / b.width * W;
      var i = K === 1 ? 0 : Math.round((x - pad.l) / pw * (K - 1));
      i = Math.min(Math.max(i, 0), K - 1);
      if (i !== state.i) select(i);
    });
    return { cur: cur, X: X };
  }

  // -- selection -----------------------------------------------------------------------------------
  function select(i) {
    var K = kmax();
    state.i = Math.min(Math.max(i, 0), K - 1);
    H.i = state.i;
    writeHash();
    ctl.slider.value = String(state.i + 1);
    ctl.index.textContent = "i = " + (state.i + 1) + " of " + K;
    if (plot) { var x = plot.X(state.i); plot.cur.setAttribute("x1", x); plot.cur.setAttribute("x2", x); }
    Array.prototype.forEach.call(document.querySelectorAll(".svd-table tbody tr"), function (tr) {
      tr.classList.toggle("sel", +tr.dataset.i === state.i);
    });
    markGallery();
    var my = ++token;
    ids.forEach(function (id) { show(id, my); });
  }

  function show(id, my) {
    var m = metas[id], sec = sections[id], i = state.i;
    var read = $(".triplet", sec);
    if (i >= m.k) {
      read.textContent = "Triplet " + (i + 1) + ": not computed for this run (k = " + m.k + ").";
      sec.classList.add("nc-run");
      H.shown[id] = { i: i, status: "none" };
      return;
    }
    sec.classList.remove("nc-run");
    read.textContent = "Triplet " + (i + 1) + " of " + m.k + ": σ_" + (i + 1) + " = " + fmtSigma(m.sigma[i]) +
      ", ‖F v − σ u‖/σ = " + fmtRes(m.residual[i][0]) + ", ‖Fᵀ u − σ v‖/σ = " + fmtRes(m.residual[i][1]) + ".";
    getTriplet(m, i).then(function (t) {
      if (my !== token) return;
      draw(id, i, t);
      if (i + 1 < m.k) getTriplet(m, i + 1).catch(function () {});  // prefetch the next one
    }, function (err) {
      if (my !== token) return;
      H.errors.push(String(err));
      read.textContent = "Could not load triplet " + (i + 1) + ": " + err.message;
    });
  }

  function draw(id, i, t) {
    var m = metas[id], sec = sections[id];
    var cv = $("canvas.eig-v", sec), vmax = drawImage(cv, t.v, m.input);
    cv.parentNode.classList.add("has");
    var umax = null, cu = $("canvas.eig-u", sec);
    if (cu) { umax = drawImage(cu, t.u, m.output); cu.parentNode.classList.add("has"); }
    else drawBars($(".eig-bars", sec), t.u, m.labels || []);
    H.shown[id] = { i: i, status: "ok", v: t.v, u: t.u, vScale: t.vScale, uScale: t.uScale,
      vMax: vmax, uMax: umax, precision: m.precision, sigma: m.sigma[i], residual: m.residual[i] };
    H.renders++;
  }

  // -- controls, keys, address -------------------------------------------------------------------------
  function readHash() {
    var kv = U.hashParams(location.hash);  // null for a malformed link: default state
    if (!kv) return;
    Object.keys(kv).forEach(function (k) {
      var v = kv[k];
      if (k === "i" && v !== "" && isFinite(+v)) state.i = Math.max(0, Math.round(+v) - 1);
      if (k === "c" && (v === "rgb" || /^\d+$/.test(v))) state.c = v;
      if (k === "cm" && U.CMAPS[v]) state.cm = v;
      if (k === "n" && (v === "v" || v === "c")) state.n = v;
    });
  }
  function writeHash() {
    var h = "#i=" + (state.i + 1) + "&c=" + state.c + "&cm=" + state.cm + "&n=" + state.n;
    if (location.hash !== h) history.replaceState(null, "", h);
    H.state = JSON.parse(JSON.stringify(state));
  }
  function redraw() {
    writeHash();
    ids.forEach(function (id) {
      var s = H.shown[id];
      if (s && s.status === "ok") draw(id, s.i, { v: s.v, u: s.u, vScale: s.vScale, uScale: s.uScale });
    });
  }
  function setupControls() {
    ctl.slider = $("#svd-slider"); ctl.index = $("#svd-index");
    ctl.ch = $("#svd-ch"); ctl.cm = $("#svd-cm"); ctl.norm = $("#svd-norm");
    var C = 1;
    ids.forEach(function (id) { C = Math.max(C, metas[id].input[0], metas[id].kind === "image" ? metas[id].output[0] : 1); });
    var opts = C === 3 ? [["rgb", "RGB composite (mid-grey = 0)"], ["0", "R"], ["1", "G"], ["2", "B"]]
      : (C === 1 ? [["0", "Y (one channel)"]] : []);
    if (!opts.length) for (var c = 0; c < C; c++) opts.push([String(c), "channel " + c]);
    opts.forEach(function (o) { var e = el("option", null, ctl.ch, o[1]); e.value = o[0]; });
    ctl.ch.value = state.c;
    if (ctl.ch.value !== state.c) { ctl.ch.value = opts[0][0]; state.c = opts[0][0]; }
    ctl.ch.disabled = opts.length < 2;
    ctl.cm.value = state.cm; ctl.norm.value = state.n;
    ctl.slider.max = String(kmax());
    ctl.slider.addEventListener("input", function () { select(+ctl.slider.value - 1); });
    $("#svd-prev").addEventListener("click", function () { select(state.i - 1); });
    $("#svd-next").addEventListener("click", function () { select(state.i + 1); });
    [ctl.ch, ctl.cm, ctl.norm].forEach(function (s) {
      s.addEventListener("change", function () {
        state.c = ctl.ch.value; state.cm = ctl.cm.value; state.n = ctl.norm.value;
        redraw();
      });
    });
    document.addEventListener("keydown", function (ev) {
      var t = ev.target && ev.target.tagName;
      if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA") return;
      var step = { ArrowLeft: -1, "[": -1, ArrowRight: 1, "]": 1 }[ev.key];
      if (step) { ev.preventDefault(); select(state.i + step); }
      else if (ev.key === "Home") { ev.preventDefault(); select(0); }
      else if (ev.key === "End") { ev.preventDefault(); select(kmax() - 1); }
    });
  }
  /* The gallery follows the selection: the selected pair is marked and is the one Tab reaches
   * (roving tabindex); when a thumbnail has the focus, the focus moves with the selection. */
  function markGallery() {
    var act = document.activeElement, focused = act && act.classList && act.classList.contains("thumb");
    Array.prototype.forEach.call(document.querySelectorAll(".svd-gallery .thumb"), function (b) {
      var on = +b.dataset.i === state.i;
      b.classList.toggle("sel", on);
      b.tabIndex = on ? 0 : -1;
      if (on) b.setAttribute("aria-current", "true"); else b.removeAttribute("aria-current");
      if (on && focused && act !== b && act.dataset.run === b.dataset.run) {
        b.focus();
        b.scrollIntoView({ block: "nearest", inline: "nearest" });
      }
    });
    H.galleryFocus = focused ? { run: document.activeElement.dataset.run, i: +document.activeElement.dataset.i } : null;
  }
  function setupGallery() {
    Array.prototype.forEach.call(document.querySelectorAll(".svd-gallery .thumb"), function (b) {
      // a click, or Enter / Space on the focused button (the browser turns both into a click)
      b.addEventListener("click", function () { select(+b.dataset.i); });
    });
  }
  function fillTable() {
    Array.prototype.forEach.call(document.querySelectorAll(".svd-table"), function (tbl) {
      var m = metas[tbl.dataset.run], body = $("tbody", tbl);
      m.sigma.forEach(function (s, i) {
        var tr = el("tr", null, body);
        tr.dataset.i = i;
        el("th", null, tr, String(i + 1)).scope = "row";
        el("td", "sig", tr, fmtSigma(s));
        el("td", "r1", tr, fmtRes(m.residual[i][0]));
        el("td", "r2", tr, fmtRes(m.residual[i][1]));
        tr.addEventListener("click", function () { select(i); });
      });
    });
  }

  LS.svdInit = function (opts) {
    root = opts.root || "";
    ids = (opts.runs || []).filter(function (id) {
      if (!metas[id]) { H.errors.push("missing SVD of run " + id); return false; }
      return true;
    });
    ids.forEach(function (id) { sections[id] = $('section.svd-run[data-run="' + id + '"]'); });
    if (!ids.length) { H.ready = true; return; }
    readHash();
    setupControls();
    fillTable();
    setupGallery();
    plot = buildPlot($(".svd-plot"));
    select(state.i);
    H.ready = true;
  };
})();
