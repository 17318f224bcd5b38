/* LinearScope viewer: vanilla JS, one classic script, works from file:// and any static server.
 *
 * Data arrive as classic scripts: data/<run>/meta.js calls LinearScope.run(meta), and tile scripts,
 * injected lazily, call LinearScope.tile(run, kind, ty, tx, {px: [...]}). Each pixel entry is
 * [y, x, oy, ox, outside[], scale, blob]; blob = base64(gzip(byte-shuffled float16 or float32)).
 * The decoded filter of the last render is exposed as window.__linearscope.lastFilter (and per run
 * in .filters[run]): {run, kind, pixel, origin, shape [P, Q, wh, ww], data (Float32Array), ...}.
 */
(function () {
  "use strict";
  var LS = window.LinearScope = {};
  var hooks = window.__linearscope = { lastFilter: null, filters: {}, state: null, errors: [],
    ready: false, renders: 0 };
  LS.runs = {};
  var tiles = {};      // "run/kind/ty-tx" -> {promise, resolve, reject, data}
  var decoded = {};    // "run/kind/y,x" -> Promise<filter|null>
  var root = "";

  LS.run = function (meta) { LS.runs[meta.id] = meta; };
  LS.tile = function (run, kind, ty, tx, payload) {
    var k = run + "/" + kind + "/" + ty + "-" + tx;
    var w = tiles[k];
    if (!w) { w = tiles[k] = { promise: Promise.resolve(payload) }; }
    w.data = payload;
    if (w.resolve) w.resolve(payload);
  };

  function loadTile(run, kind, ty, tx) {
    var k = run + "/" + kind + "/" + ty + "-" + tx;
    if (tiles[k]) return tiles[k].promise;
    var w = {};
    w.promise = new Promise(function (res, rej) { w.resolve = res; w.reject = rej; });
    tiles[k] = w;
    var s = document.createElement("script");
    s.src = root + "data/" + encodeURIComponent(run) + "/" + kind + "/" + ty + "-" + tx + ".js";
    s.async = true;
    s.onload = function () { if (!w.data) w.reject(new Error("tile " + s.src + " did not register")); };
    s.onerror = function () { delete tiles[k]; w.reject(new Error("cannot load " + s.src)); };
    document.head.appendChild(s);
    return w.promise;
  }

  // -- decoding ------------------------------------------------------------------------------
  function b64bytes(b64) {
    var bin = atob(b64), n = bin.length, u = new Uint8Array(n);
    for (var i = 0; i < n; i++) u[i] = bin.charCodeAt(i);
    return u;
  }
  function gunzip(bytes) {
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).arrayBuffer().then(function (b) { return new Uint8Array(b); });
  }
  function unshuffle(bytes, size) {
    var n = bytes.length / size, out = new Uint8Array(bytes.length);
    for (var k = 0; k < size; k++) {
      var off = k * n;
      for (var e = 0; e < n; e++) out[e * size + k] = bytes[off + e];
    }
    return out;
  }
  function half(h) {  // float16 bits -> number (fallback when Float16Array is missing)
    var s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * f * Math.pow(2, -24);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * Math.pow(2, e - 15);
  }
  function decodeEntry(entry, an) {
    var scale = entry[5], f16 = an.precision === "float16";
    return gunzip(b64bytes(entry[6])).then(function (raw) {
      var bytes = unshuffle(raw, f16 ? 2 : 4), out;
      if (f16) {
        var n = bytes.length / 2;
        out = new Float32Array(n);
        if (typeof Float16Array !== "undefined") {
          var h = new Float16Array(bytes.buffer);
          for (var i = 0; i < n; i++) out[i] = h[i] * scale;
        } else {
          var u = new Uint16Array(bytes.buffer);
          for (var j = 0; j < n; j++) out[j] = half(u[j]) * scale;
        }
      } else {
        out = new Float32Array(bytes.buffer);
      }
      return out;
    });
  }
  function shapeOf(an, run) {
    var P = an.mode === "full" ? an.own : 1;
    var Q = an.mode === "lum" ? 1 : an.otherChannels;
    return [P, Q, an.window[0], an.window[1]];
  }
  function tileSet(an) {
    if (!an._set) { an._set = {}; an.tiles.forEach(function (t) { an._set[t[0] + "," + t[1]] = true; }); }
    return an._set;
  }
  // nearest pixel the site holds (region and stride chosen at build time)
  function snap(an, y, x) {
    var r = an.region, s = an.stride;
    function one(v, lo, len) {
      v = Math.min(Math.max(v, lo), lo + len - 1);
      var k = Math.round((v - lo) / s), kmax = Math.floor((len - 1) / s);
      return lo + Math.min(k, kmax) * s;
    }
    return [one(y, r[0], r[2]), one(x, r[1], r[3])];
  }
  // -> Promise<{status, ...}>
  function getFilter(meta, kind, y, x) {
    var an = meta.analyses[kind];
    if (!an) return Promise.resolve({ status: "none", kind: kind });
    var p = snap(an, y, x), S = an.tile, ty = Math.floor(p[0] / S), tx = Math.floor(p[1] / S);
    var key = meta.id + "/" + kind + "/" + p[0] + "," + p[1];
    if (!tileSet(an)[ty + "," + tx]) return Promise.resolve({ status: "missing", kind: kind, pixel: p });
    if (!decoded[key]) {
      decoded[key] = loadTile(meta.id, kind, ty, tx).then(function (payload) {
        var e = null;
        for (var i = 0; i < payload.px.length; i++) {
          if (payload.px[i][0] === p[0] && payload.px[i][1] === p[1]) { e = payload.px[i]; break; }
        }
        if (!e) return { status: "missing", kind: kind, pixel: p };
        return decodeEntry(e, an).then(function (data) {
          return { status: "ok", kind: kind, pixel: p, origin: [e[2], e[3]], outside: e[4],
            scale: e[5], data: data, shape: shapeOf(an, meta), an: an };
        });
      }, function (err) { delete decoded[key]; throw err; });
    }
    return decoded[key];
  }

  // -- colours ---------------------------------------------------------------------------------
  var CMAPS = {  // ColorBrewer diverging maps (colour-blind safe), from -1 to +1
    rdbu: ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"],
    puor: ["#2d004b", "#542788", "#8073ac", "#b2abd2", "#d8daeb", "#f7f7f7", "#fee0b6", "#fdb863", "#e08214", "#b35806", "#7f3b08"]
  };
  var luts = {};
  function lut(name) {
    if (luts[name]) return luts[name];
    var stops = CMAPS[name] || CMAPS.rdbu, n = stops.length - 1, out = new Uint8Array(256 * 3);
    var rgb = stops.map(function (h) { return [1, 3, 5].map(function (i) { return parseInt(h.substr(i, 2), 16); }); });
    for (var k = 0; k < 256; k++) {
      var t = k / 255 * n, i = Math.min(Math.floor(t), n - 1), f = t - i;
      for (var c = 0; c < 3; c++) out[3 * k + c] = Math.round(rgb[i][c] * (1 - f) + rgb[i + 1][c] * f);
    }
    return (luts[name] = out);
  }
  function tailParams(st) {
    var p = +st.p;
    if (st.t === "gamma") return { kind: "gamma", g: Math.max(0.05, p) };
    if (st.t === "log") return { kind: "log", d: 1 + Math.round(p * 7) };
    return { kind: "lin" };
  }
  function tmap(v, m, tp) {  // value -> [-1, 1]
    if (!(m > 0)) return 0;
    var u = v / m, a = Math.min(Math.abs(u), 1), s = u < 0 ? -1 : 1;
    if (tp.kind === "gamma") return s * Math.pow(a, tp.g);
    if (tp.kind === "log") return a > 0 ? s * Math.max(0, 1 + Math.log10(a) / tp.d) : 0;
    return s * a;
  }
  function tinv(t, m, tp) {
    var a = Math.abs(t), s = t < 0 ? -1 : 1;
    if (tp.kind === "gamma") return s * m * Math.pow(a, 1 / tp.g);
    if (tp.kind === "log") return a === 0 ? 0 : s * m * Math.pow(10, tp.d * (a - 1));
    return t * m;
  }
  function fmt(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    return (a >= 1e-3 && a < 1e4) ? v.toPrecision(3).replace(/\.?0+$/, "") : v.toExponential(2);
  }

  // -- page -------------------------------------------------------------------------------------
  var state = { d: null, r: 0, y: 0, x: 0, pin: false, a: 0, b: "0", n: "f", cm: "rdbu", t: "lin", p: 0.5, z: 0 };
  var slots = [];
  var runIds = [];
  var ctl = {};
  var token = 0;

  function $(sel, el) { return (el || document).querySelector(sel); }
  function el(tag, cls, parent) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (parent) parent.appendChild(e);
    return e;
  }

  function readHash() {
    var kv = hashParams(location.hash);
    if (!kv) return;  // none, or malformed (#b=%E0%A4%A): the page opens in its default state
    if (kv.d === "in" || kv.d === "out") {
      state.d = kv.d; state.r = +kv.r || 0; state.y = +kv.y || 0; state.x = +kv.x || 0;
      state.pin = kv.pin === "1";
    }
    if (kv.a !== undefined) state.a = +kv.a || 0;
    if (kv.b !== undefined) state.b = kv.b;
    if (kv.n === "f" || kv.n === "g") state.n = kv.n;
    if (CMAPS[kv.cm]) state.cm = kv.cm;
    if (kv.t === "lin" || kv.t === "gamma" || kv.t === "log") state.t = kv.t;
    if (kv.p !== undefined && isFinite(+kv.p)) state.p = Math.min(1, Math.max(0, +kv.p));
    if (kv.z !== undefined && SIZES[+kv.z]) state.z = +kv.z;
  }
  function hashString() {
    var parts = [];
    if (state.d) parts.push("d=" + state.d, "r=" + state.r, "y=" + state.y, "x=" + state.x, "pin=" + (state.pin ? 1 : 0));
    parts.push("a=" + state.a, "b=" + state.b, "n=" + state.n, "cm=" + state.cm, "t=" + state.t, "p=" + state.p, "z=" + state.z);
    return "#" + parts.join("&");
  }
  function writeHash() {
    var h = hashString();
    if (location.hash !== h) history.replaceState(null, "", h);
    if (ctl.permalink) ctl.permalink.href = h;
    hooks.state = JSON.parse(JSON.stringify(state));
  }

  function paneGeom(slot, pane) {  // [H, W] of the image shown in a pane
    var m = slot.meta;
    if (pane === "input") return [m.input[1], m.input[2]];
    return [m.output[1], m.output[2]];
  }
  var SIZES = [288, 448, 640, 896];  // pane sides in CSS pixels (the "Image size" control)
  function sizeStage(o) {
    var side = SIZES[state.z] || SIZES[0];
    var z = side / Math.max(o.H, o.W);
    o.stage.style.width = Math.round(o.W * z) + "px";
    o.stage.style.height = Math.round(o.H * z) + "px";
  }
  function layout() {
    document.documentElement.style.setProperty("--pane", (SIZES[state.z] || SIZES[0]) + "px");
    slots.forEach(function (slot) { for (var k in slot.panes) sizeStage(slot.panes[k]); draw(slot); });
  }
  function setupStage(slot, pane, stage) {
    var g = paneGeom(slot, pane);
    var o = { stage: stage, H: g[0], W: g[1] };
    sizeStage(o);
    o.h = el("div", "xh-h", stage); o.v = el("div", "xh-v", stage);
    o.px = el("div", "px", stage); o.fp = el("div", "fp", stage);
    [o.h, o.v, o.px, o.fp].forEach(function (e) { e.hidden = true; });
    return o;
  }
  function placeCross(o, cy, cx, py, px) {  // centre (continuous) and pixel box
    if (!o) return;
    o.h.hidden = o.v.hidden = false;
    o.h.style.top = (cy / o.H * 100) + "%";
    o.v.style.left = (cx / o.W * 100) + "%";
    if (py === null) { o.px.hidden = true; return; }
    o.px.hidden = false;
    o.px.style.top = (py / o.H * 100) + "%"; o.px.style.left = (px / o.W * 100) + "%";
    o.px.style.height = (100 / o.H) + "%"; o.px.style.width = (100 / o.W) + "%";
  }
  function placeRect(o, oy, ox, h, w) {
    if (!o) return;
    if (oy === null) { o.fp.hidden = true; return; }
    o.fp.hidden = false;
    o.fp.style.top = (oy / o.H * 100) + "%"; o.fp.style.left = (ox / o.W * 100) + "%";
    o.fp.style.height = (h / o.H * 100) + "%"; o.fp.style.width = (w / o.W * 100) + "%";
  }

  function pixelAt(o, ev) {
    var r = o.stage.getBoundingClientRect();
    var y = Math.floor((ev.clientY - r.top) / r.height * o.H), x = Math.floor((ev.clientX - r.left) / r.width * o.W);
    return [Math.min(Math.max(y, 0), o.H - 1), Math.min(Math.max(x, 0), o.W - 1)];
  }

  function makeSlot(meta, section) {
    var slot = { meta: meta, section: section, panes: {} };
    ["input", "output", "residual"].forEach(function (pane) {
      var fig = $('[data-pane="' + pane + '"]', section);
      if (!fig) return;
      var stage = $(".stage", fig);
      if (pane === "output" || pane === "residual" || pane === "input") slot.panes[pane] = setupStage(slot, pane === "residual" ? "output" : pane, stage);
      var dom = pane === "input" ? "in" : "out";  // the residual lives on the output grid
      stage.addEventListener("mousemove", function (ev) {
        if (state.pin) { readPaneValue(slot, pane, ev); return; }
        var p = pixelAt(slot.panes[pane], ev);
        probe(dom, slot.index, p[0], p[1], false);
      });
      var downAt = null;
      stage.addEventListener("mousedown", function (ev) {
        // focus without scrolling, so the pixel under the mouse stays the one clicked
        ev.preventDefault();
        downAt = pixelAt(slot.panes[pane], ev);
        stage.focus({ preventScroll: true });
      });
      stage.addEventListener("click", function (ev) {
        var p = downAt || pixelAt(slot.panes[pane], ev);
        downAt = null;
        var same = state.pin && state.d === dom && state.r === slot.index && state.y === p[0] && state.x === p[1];
        probe(dom, slot.index, p[0], p[1], !same);
      });
      stage.addEventListener("focus", function () {
        if (!state.d && stage.matches(":focus-visible")) {
          var o = slot.panes[pane];
          probe(dom, slot.index, Math.floor(o.H / 2), Math.floor(o.W / 2), true);
        }
      });
      stage.addEventListener("keydown", function (ev) { key(ev, dom, slot); });
    });
    var ffig = $('[data-pane="filter"]', section);
    slot.f = {
      fig: ffig, stage: $(".fstage", ffig), canvas: $(".fcanvas", ffig), msg: $(".fmsg", ffig),
      mark: $(".fmark", ffig),
      bar: $(".colorbar", ffig), ticks: $(".ticks", ffig), cap: $(".fcap", ffig),
      val: $(".val", ffig), outside: $(".outside", ffig)
    };
    slot.f.canvas.addEventListener("mousemove", function (ev) { readValue(slot, ev); });
    return slot;
  }

  function key(ev, dom, slot) {
    var d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[ev.key];
    if (!d) {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        if (state.d) { state.pin = !state.pin; update(); }
      }
      return;
    }
    ev.preventDefault();
    ev.stopPropagation();
    var k = ev.shiftKey ? 10 : 1;
    var r = slot ? slot.index : state.r;
    if (!state.d || (dom && (state.d !== dom || state.r !== r))) {
      // start from the current probe mapped into this pane, or its centre
      var o = slots[r].panes[dom === "in" ? "input" : "output"];
      var c = state.d ? crossFor(slots[r]) : null;
      var y0 = c ? Math.floor(dom === "in" ? c.iy : c.oy) : Math.floor(o.H / 2);
      var x0 = c ? Math.floor(dom === "in" ? c.ix : c.ox) : Math.floor(o.W / 2);
      probe(dom, r, y0, x0, true);
    }
    var g = slots[state.r].panes[state.d === "in" ? "input" : "output"];
    probe(state.d, state.r, Math.min(Math.max(state.y + d[0] * k, 0), g.H - 1),
      Math.min(Math.max(state.x + d[1] * k, 0), g.W - 1), true);
  }

  function probe(dom, r, y, x, pin) {
    state.d = dom; state.r = r; state.y = y; state.x = x; state.pin = !!pin;
    update();
  }

  // continuous input/output coordinates of the probe for one slot (input pixel, output pixel)
  function cropOf(meta) {
    var c = meta.provenance && meta.provenance.crop;
    return c && c.length === 4 ? [c[0], c[1]] : [0, 0];
  }
  function crossFor(slot) {
    var m = slot.meta, src = slots[state.r].meta, s = m.scale || 1, o = m.offset || 0;
    var u, v;  // input coordinates (continuous), same image for every slot
    if (state.d === "in") { u = state.y + 0.5; v = state.x + 0.5; }
    else {
      var ss = src.scale || 1, so = src.offset || 0;
      u = (state.y + 0.5 - so) / ss; v = (state.x + 0.5 - so) / ss;
    }
    // runs on the same image file may use different crops: go through image coordinates
    var cs = cropOf(src), ck = cropOf(m);
    u += cs[0] - ck[0]; v += cs[1] - ck[1];
    var c = { iy: u, ix: v, oy: s * u + o, ox: s * v + o };
    if (state.d === "out" && slot === slots[state.r]) { c.oy = state.y + 0.5; c.ox = state.x + 0.5; }
    return c;
  }

  function update() {
    writeHash();
    ctl.pinState.textContent = !state.d ? "Not pinned: hover a pane, click to pin." :
      (state.pin ? "Pinned at " : "Following the mouse at ") +
      (state.d === "in" ? "input" : "output") + " pixel (" + state.y + ", " + state.x + ")" +
      (state.pin ? ". Esc releases; arrow keys move (Shift: ten)." : ". Click to pin.");
    var my = ++token;
    hooks.probeAt = performance.now();
    slots.forEach(function (slot) { show(slot, my); });
  }

  function show(slot, my) {
    if (!state.d) return;
    var m = slot.meta, c = crossFor(slot);
    var kind = state.d === "in" ? "columns" : "rows";
    var H = m.input[1], W = m.input[2], Ho = m.output[1], Wo = m.output[2];
    var iy = Math.min(Math.max(Math.floor(c.iy), 0), H - 1), ix = Math.min(Math.max(Math.floor(c.ix), 0), W - 1);
    var oy = Math.min(Math.max(Math.floor(c.oy), 0), Ho - 1), ox = Math.min(Math.max(Math.floor(c.ox), 0), Wo - 1);
    var y = kind === "columns" ? iy : oy, x = kind === "columns" ? ix : ox;
    if (c.iy < 0 || c.ix < 0 || c.iy >= H || c.ix >= W) {
      slot.cur = null;
      message(slot, "This point lies outside this run's crop of the image.", true);
      return;
    }
    for (var name in slot.panes) slot.panes[name].stage.classList.toggle("pinned", state.pin);
    placeCross(slot.panes.input, c.iy, c.ix, kind === "columns" ? iy : null, ix);
    placeCross(slot.panes.output, c.oy, c.ox, kind === "rows" ? oy : null, ox);
    placeCross(slot.panes.residual, c.oy, c.ox, kind === "rows" ? oy : null, ox);
    if (m.kind !== "image") { message(slot, "Filters not computed: vector (classifier) model; class rows will follow.", true); return; }
    if (!m.analyses[kind]) {
      placeRect(slot.panes.input, null); placeRect(slot.panes.output, null); placeRect(slot.panes.residual, null);
      message(slot, (kind === "columns" ? "Columns (projective filters)" : "Rows (receptive filters)") +
        " not computed for this run.", true);
      slot.cur = null;
      return;
    }
    if (!slot.cur) message(slot, "loading…", false);
    getFilter(m, kind, y, x).then(function (f) {
      if (my !== token) return;  // a newer probe won
      if (f.status !== "ok") {
        placeRect(slot.panes.input, null); placeRect(slot.panes.output, null); placeRect(slot.panes.residual, null);
        slot.cur = null;
        message(slot, (kind === "columns" ? "Column of input" : "Row of output") + " pixel (" + f.pixel[0] + ", " + f.pixel[1] +
          ") not computed (not in the store, or outside the pixels this site was built with).", true);
        return;
      }
      slot.cur = f;
      var tgt = kind === "columns" ? [slot.panes.output, slot.panes.residual] : [slot.panes.input];
      placeRect(slot.panes.input, null); placeRect(slot.panes.output, null); placeRect(slot.panes.residual, null);
      tgt.forEach(function (o) { placeRect(o, f.origin[0], f.origin[1], f.shape[2], f.shape[3]); });
      draw(slot);
      prefetch(m, kind, f.pixel);
    }, function (err) {
      if (my !== token) return;
      hooks.errors.push(String(err));
      message(slot, "Could not load this filter: " + err.message, true);
    });
  }

  // load the neighbouring tiles ahead of the mouse (only tiles the site has: no failed loads)
  function prefetch(meta, kind, p) {
    var an = meta.analyses[kind], S = an.tile, ty = Math.floor(p[0] / S), tx = Math.floor(p[1] / S);
    [[-1, 0], [1, 0], [0, -1], [0, 1]].forEach(function (d) {
      if (tileSet(an)[(ty + d[0]) + "," + (tx + d[1])]) {
        loadTile(meta.id, kind, ty + d[0], tx + d[1]).catch(function () {});
      }
    });
  }

  function message(slot, text, nc) {
    slot.f.stage.classList.remove("has");
    slot.f.stage.classList.toggle("nc", !!nc);
    slot.f.msg.textContent = text;
    slot.f.cap.textContent = text;
    slot.f.val.textContent = "value: –";
    slot.f.outside.textContent = "energy outside the window: –";
  }

  function channelNames(n) { return n === 3 ? ["R", "G", "B"] : (n === 1 ? ["Y"] : null); }

  function selection(f) {  // which (a, b) of the block to draw; b === "rgb" for a composite
    var P = f.shape[0], Q = f.shape[1];
    var a = Math.min(state.a, P - 1), b = state.b === "rgb" && Q === 3 ? "rgb" : Math.min(+state.b || 0, Q - 1);
    return { a: a, b: b };
  }
  function normMax(slot, f, sel) {
    var an = f.an, wh = f.shape[2], ww = f.shape[3], n = wh * ww, Q = f.shape[1];
    var bs = sel.b === "rgb" ? [0, 1, 2] : [sel.b];
    if (state.n === "g" && an.globalMax) {
      return Math.max.apply(null, bs.map(function (b) { return an.globalMax[sel.a][b]; }));
    }
    var m = 0;
    bs.forEach(function (b) {
      var off = (sel.a * Q + b) * n;
      for (var i = 0; i < n; i++) { var v = Math.abs(f.data[off + i]); if (v > m) m = v; }
    });
    return m;
  }

  function draw(slot) {
    var f = slot.cur, m = slot.meta;
    if (!f) return;
    var sel = selection(f), wh = f.shape[2], ww = f.shape[3], n = wh * ww, Q = f.shape[1];
    var mx = normMax(slot, f, sel), tp = tailParams(state), L = lut(state.cm);
    var cv = slot.f.canvas;
    cv.width = ww; cv.height = wh;
    var side = slot.f.stage.clientWidth || 288, z = side / Math.max(wh, ww);
    cv.style.width = Math.round(ww * z) + "px"; cv.style.height = Math.round(wh * z) + "px";
    var ctx = cv.getContext("2d"), img = ctx.createImageData(ww, wh), d = img.data;
    for (var i = 0; i < n; i++) {
      if (sel.b === "rgb") {
        for (var c = 0; c < 3; c++) {
          var tv = tmap(f.data[(sel.a * Q + c) * n + i], mx, tp);
          d[4 * i + c] = Math.round(127.5 + 127.5 * tv);
        }
      } else {
        var t = tmap(f.data[(sel.a * Q + sel.b) * n + i], mx, tp);
        var k = Math.round((t + 1) / 2 * 255) * 3;
        d[4 * i] = L[k]; d[4 * i + 1] = L[k + 1]; d[4 * i + 2] = L[k + 2];
      }
      d[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    // mark where the probed pixel itself sits in the window (through the model's geometry)
    var c = state.d ? crossFor(slot) : null, my = null, mxp = null;
    if (c) {
      my = (f.kind === "columns" ? c.oy : c.iy) - f.origin[0];
      mxp = (f.kind === "columns" ? c.ox : c.ix) - f.origin[1];
    }
    var inside = c && my >= 0 && mxp >= 0 && my <= wh && mxp <= ww;
    slot.f.mark.hidden = !inside;
    if (inside) { slot.f.mark.style.top = (my / wh * 100) + "%"; slot.f.mark.style.left = (mxp / ww * 100) + "%"; }
    slot.f.stage.classList.add("has");
    slot.f.stage.classList.remove("nc");
    drawBar(slot, mx, tp, sel);
    var col = f.kind === "columns";
    var an = f.an, own = channelNames(an.own), oth = channelNames(an.otherChannels);
    var aName = an.mode === "full" ? (own ? own[sel.a] : sel.a) : (col ? "grey impulse" : "grey read-out");
    var bName = sel.b === "rgb" ? "RGB composite (mid-grey = 0)" : (an.mode === "lum" ? "luminance" : (oth ? oth[sel.b] : sel.b));
    var cap = (col ? "Column (projective filter) of input pixel (" : "Row (receptive filter) of output pixel (") +
      f.pixel[0] + ", " + f.pixel[1] + "), " + aName + " → " + bName + ": " +
      (col ? "how this input pixel spreads over the output" : "which input pixels make this output pixel") +
      ". Window " + wh + "×" + ww + " at " + (col ? "output" : "input") + " (" + f.origin[0] + ", " + f.origin[1] + ")" +
      (an.full ? " (the whole image)" : "") + ", colours ±" + fmt(mx) + " (" + (state.n === "g" ? "global" : "per filter") + ", " +
      (tp.kind === "lin" ? "linear" : tp.kind === "gamma" ? "gamma " + tp.g : "log, " + tp.d + " decades") + ")" +
      (slot.f.mark.hidden ? "." : "; the ring marks the pixel's own position.");
    slot.f.cap.textContent = cap;
    var out = f.outside, oa = an.mode === "full" ? out[sel.a] : Math.max.apply(null, out);
    slot.f.outside.textContent = "energy outside the window: " + (oa < 0 || oa === undefined ? "not stored" :
      (100 * oa).toPrecision(3) + " %" + (an.mode === "full" ? "" : " (max over channels)"));
    slot.f.sel = sel;
    var rec = { run: m.id, kind: f.kind, pixel: f.pixel.slice(), origin: f.origin.slice(), shape: f.shape.slice(),
      scale: f.scale, precision: an.precision, mode: an.mode, outside: f.outside.slice(),
      data: f.data, a: sel.a, b: sel.b, max: mx };
    rec.ms = performance.now() - hooks.probeAt;  // probe → drawn (load, decode, draw)
    hooks.lastFilter = rec;
    hooks.filters[m.id] = rec;
    hooks.renders++;
  }

  function drawBar(slot, mx, tp, sel) {
    var cv = slot.f.bar, ctx = cv.getContext("2d"), img = ctx.createImageData(256, 1), L = lut(state.cm);
    for (var k = 0; k < 256; k++) {
      if (sel.b === "rgb") { img.data[4 * k] = img.data[4 * k + 1] = img.data[4 * k + 2] = k; }
      else { img.data[4 * k] = L[3 * k]; img.data[4 * k + 1] = L[3 * k + 1]; img.data[4 * k + 2] = L[3 * k + 2]; }
      img.data[4 * k + 3] = 255;
    }
    cv.width = 256; cv.height = 1;
    ctx.putImageData(img, 0, 0);
    var tk = slot.f.ticks;
    tk.textContent = "";
    [-1, -0.5, 0, 0.5, 1].forEach(function (t) {
      var s = el("span", null, tk);
      s.style.left = ((t + 1) / 2 * 100) + "%";
      s.textContent = fmt(tinv(t, mx, tp));
    });
  }

  function readValue(slot, ev) {
    var f = slot.cur;
    if (!f || !slot.f.sel) return;
    var r = slot.f.canvas.getBoundingClientRect(), wh = f.shape[2], ww = f.shape[3];
    var y = Math.min(wh - 1, Math.max(0, Math.floor((ev.clientY - r.top) / r.height * wh)));
    var x = Math.min(ww - 1, Math.max(0, Math.floor((ev.clientX - r.left) / r.width * ww)));
    showValue(slot, y, x);
  }
  // pinned probe, mouse over the image the filter lives on: read the filter there
  function readPaneValue(slot, pane, ev) {
    var f = slot.cur;
    if (!f || !slot.f.sel) return;
    if ((f.kind === "columns") !== (pane !== "input")) return;
    var p = pixelAt(slot.panes[pane], ev), y = p[0] - f.origin[0], x = p[1] - f.origin[1];
    if (y < 0 || x < 0 || y >= f.shape[2] || x >= f.shape[3]) {
      slot.f.val.textContent = "value at " + (pane === "input" ? "input" : "output") + " (" + p[0] + ", " + p[1] + "): outside the stored window";
      return;
    }
    showValue(slot, y, x);
  }
  function showValue(slot, y, x) {
    var f = slot.cur, wh = f.shape[2], ww = f.shape[3], Q = f.shape[1];
    var sel = slot.f.sel, n = wh * ww, i = y * ww + x;
    var at = (f.kind === "columns" ? "output" : "input") + " (" + (f.origin[0] + y) + ", " + (f.origin[1] + x) + ")";
    var v = sel.b === "rgb" ? [0, 1, 2].map(function (c) { return fmt(f.data[(sel.a * Q + c) * n + i]); }).join(", ")
      : fmt(f.data[(sel.a * Q + sel.b) * n + i]);
    slot.f.val.textContent = "value at " + at + ": " + v;
  }

  function exportPNG() {
    var slot = slots.filter(function (s) { return s.cur; })[0];
    if (!slot) { ctl.pinState.textContent = "Nothing to export: show a filter first."; return; }
    var f = slot.cur, src = slot.f.canvas, k = Math.max(1, Math.floor(512 / Math.max(src.width, src.height)));
    // the map at nearest-neighbour zoom, then its colorbar and tick values underneath
    var c = document.createElement("canvas"), w = Math.max(src.width * k, 256), h = src.height * k;
    c.width = w; c.height = h + 40;
    var ctx = c.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(src, Math.floor((w - src.width * k) / 2), 0, src.width * k, h);
    ctx.drawImage(slot.f.bar, 0, h + 6, w, 12);
    ctx.fillStyle = "#111"; ctx.font = "11px sans-serif"; ctx.textBaseline = "top";
    var spans = slot.f.ticks.querySelectorAll("span");
    Array.prototype.forEach.call(spans, function (sp, i) {
      var x = i / (spans.length - 1) * w;
      ctx.textAlign = i === 0 ? "left" : (i === spans.length - 1 ? "right" : "center");
      ctx.fillText(sp.textContent, x, h + 22);
    });
    var a = ctl.download;
    a.href = c.toDataURL("image/png");
    a.download = slot.meta.id + "-" + f.kind + "-" + f.pixel[0] + "-" + f.pixel[1] + "-a" + slot.f.sel.a + "-b" + slot.f.sel.b + ".png";
    hooks.lastExport = a.download;
    a.click();
  }

  function fillSelect(sel, opts, value) {
    sel.textContent = "";
    opts.forEach(function (o) { var e = el("option", null, sel); e.value = o[0]; e.textContent = o[1]; });
    sel.value = String(value);
    if (sel.value !== String(value) && opts.length) sel.value = opts[0][0];
  }

  function setupControls() {
    ctl.own = $("#ls-own"); ctl.other = $("#ls-other"); ctl.cmap = $("#ls-cmap"); ctl.norm = $("#ls-norm");
    ctl.tail = $("#ls-tail"); ctl.param = $("#ls-param"); ctl.paramText = $("#ls-param-text");
    ctl.pinState = $("#ls-pin-state"); ctl.permalink = $("#ls-permalink"); ctl.download = $("#ls-download");
    var P = 1, Q = 1, mode = "full";
    slots.forEach(function (s) {
      for (var k in s.meta.analyses) {
        var an = s.meta.analyses[k], sh = shapeOf(an);
        P = Math.max(P, sh[0]); Q = Math.max(Q, sh[1]); mode = an.mode;
      }
    });
    var ownOpts = [], othOpts = [];
    var ownNames = channelNames(P), othNames = channelNames(Q);  // R, G, B / Y, else numbers
    for (var a = 0; a < P; a++) ownOpts.push([String(a), mode === "full" ? (ownNames ? ownNames[a] : "channel " + a) : "composite"]);
    if (mode === "lum") othOpts.push(["0", "luminance"]);
    else {
      if (Q === 3) othOpts.push(["rgb", "RGB composite"]);
      for (var b = 0; b < Q; b++) othOpts.push([String(b), othNames ? othNames[b] : "channel " + b]);
    }
    fillSelect(ctl.own, ownOpts, state.a);
    fillSelect(ctl.other, othOpts, state.b);
    ctl.own.disabled = P < 2; ctl.other.disabled = othOpts.length < 2;
    state.a = +ctl.own.value; state.b = ctl.other.value;
    ctl.cmap.value = state.cm; ctl.norm.value = state.n; ctl.tail.value = state.t; ctl.param.value = state.p;
    ctl.size = $("#ls-size");
    ctl.size.value = String(state.z);
    ctl.size.addEventListener("change", function () { state.z = +ctl.size.value; writeHash(); layout(); });
    function changed() {
      state.a = +ctl.own.value; state.b = ctl.other.value; state.cm = ctl.cmap.value; state.n = ctl.norm.value;
      state.t = ctl.tail.value; state.p = +ctl.param.value;
      paramText();
      writeHash();
      slots.forEach(draw);
    }
    function paramText() {
      var tp = tailParams(state);
      ctl.param.disabled = tp.kind === "lin";
      ctl.paramText.textContent = tp.kind === "gamma" ? "γ = " + tp.g : tp.kind === "log" ? tp.d + " decades" : "linear";
    }
    [ctl.own, ctl.other, ctl.cmap, ctl.norm, ctl.tail, ctl.param].forEach(function (c) {
      c.addEventListener("change", changed); c.addEventListener("input", changed);
    });
    paramText();
    $("#ls-export").addEventListener("click", exportPNG);
    ctl.permalink.addEventListener("click", function (ev) {
      ev.preventDefault(); writeHash();
      if (navigator.clipboard && location.protocol !== "file:") navigator.clipboard.writeText(location.href).catch(function () {});
      ctl.pinState.textContent = "This page's address now opens the same pixel and view.";
    });
  }

  /** The key=value pairs of a permalink's fragment, or null when there is none or it is
   * malformed: decodeURIComponent throws URIError on a bad escape ("%", "%E0%A4%A"), which would
   * stop the page initialising, so a bad link opens the page in its default state instead. */
  function hashParams(hash) {
    var h = String(hash || "").replace(/^#/, "");
    if (!h) return null;
    var kv = {};
    try {
      h.split("&").forEach(function (p) {
        var i = p.indexOf("=");
        if (i > 0) kv[p.slice(0, i)] = decodeURIComponent(p.slice(i + 1));
      });
    } catch (e) {
      return null;
    }
    return kv;
  }

  // Shared with the other pages (svd.js, classify.js): decoding of blobs written by
  // sitegen/tiles.py (encode_block), colormaps and value formatting. Pages draw with these so
  // every view of the site decodes and colours values the same way.
  LS.util = {
    b64bytes: b64bytes, gunzip: gunzip, unshuffle: unshuffle, half: half,
    /** Promise<Float32Array> of one encoded block: precision "float16" or "float32". */
    decode: function (scale, blob, precision) {
      return decodeEntry([0, 0, 0, 0, null, scale, blob], { precision: precision });
    },
    CMAPS: CMAPS, lut: lut, tailParams: tailParams, tmap: tmap, tinv: tinv, fmt: fmt,
    hooks: hooks, hashParams: hashParams
  };

  LS.init = function (opts) {
    root = opts.root || "";
    runIds = opts.runs || [];
    var start = function () {
      if (!runIds.length) { hooks.ready = true; return; }  // the index: nothing to drive
      readHash();
      runIds.forEach(function (id, i) {
        var meta = LS.runs[id];
        var section = $('section.run[data-run="' + id + '"]');
        if (!meta || !section) { hooks.errors.push("missing run " + id); return; }
        var slot = makeSlot(meta, section);
        slot.index = i;
        slots.push(slot);
      });
      if (state.r >= slots.length) state.r = 0;
      setupControls();
      if (state.z) layout();
      document.addEventListener("keydown", function (ev) {
        if (ev.key === "Escape") {
          if (state.pin) { state.pin = false; update(); }
          return;
        }
        var t = ev.target && ev.target.tagName;
        if (t === "SELECT" || t === "INPUT" || t === "TEXTAREA" || t === "BUTTON") return;
        // arrows move a pinned probe; otherwise they keep scrolling the page
        if (state.d && state.pin && /^Arrow/.test(ev.key)) key(ev, null, null);
      });
      window.addEventListener("hashchange", function () { readHash(); update(); });
      window.addEventListener("resize", function () { slots.forEach(draw); });
      if (state.d) update(); else writeHash();
      hooks.ready = true;
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  };
})();
