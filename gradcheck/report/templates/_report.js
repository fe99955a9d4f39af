{% raw %}
/* gradcheck report: pan/zoom on the step chains and op views, a step's op graph on click, search.
   Everything the page says is in the HTML already; this only adds interaction. No network. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gc-data").textContent);
  var S = DATA.strings, PAL = DATA.palette, OPW = 124, OPH = 24;
  var NS = "http://www.w3.org/2000/svg";
  document.documentElement.classList.add("js");

  function fmt(x) {
    if (x === null || x === undefined) return "none";
    if (x === 0) return "0";
    var e = x.toExponential(2);
    return e.replace(/e([+-])(\d)$/, "e$10$2");
  }
  function colour(t) {
    t = Math.max(0, Math.min(1, t)) * (PAL.length - 1);
    var i = Math.min(Math.floor(t), PAL.length - 2), f = t - i;
    var a = PAL[i], b = PAL[i + 1], out = "#";
    for (var k = 1; k < 7; k += 2) {
      var x = parseInt(a.substr(k, 2), 16), y = parseInt(b.substr(k, 2), 16);
      var v = Math.round(x + (y - x) * f).toString(16);
      out += v.length < 2 ? "0" + v : v;
    }
    return out;
  }
  var MARK = {unreached: "url(#gc-hatch)", zero: "#fd8d3c", nonfinite: "url(#gc-cross)",
              not_in_graph: "#ffffff", not_asked: "#eef1f4", unrecorded: "#f6f8fa"};
  var WORDS = {unreached: "no gradient arrived", zero: "exactly zero", nonfinite: "non-finite",
               not_in_graph: "not in the autograd graph",
               not_asked: "reads weights only: their gradient was not asked for (grad_weights), so none is computed here; not a break",
               unrecorded: "|g| not recorded: made inside a composite op (e.g. a weight's transpose inside linear), where the op detail puts no hook"};

  /* -- a pan/zoom viewer: wheel scrolls, ctrl+wheel zooms, drag pans ------------------------ */
  /* one viewer per box, made once: load() swaps the drawing (an op view per step), so no
     listener is ever added twice */
  function Viewer(box, svg) {
    var W = 1, H = 1;
    var vb = {x: 0, y: 0, w: 1, h: 1};
    function load(next) {
      svg = next;
      W = +svg.getAttribute("width"); H = +svg.getAttribute("height");
      self.W = W; self.H = H;
      box.style.height = "";
      // no taller than the drawing at full width (a 4-step chain needs no 640 px box)
      var fitH = H * box.clientWidth / Math.max(1, W) + 4;
      if (fitH < box.clientHeight) box.style.height = Math.max(160, fitH) + "px";
      svg.setAttribute("width", "100%");
      svg.setAttribute("height", "100%");
      svg.setAttribute("preserveAspectRatio", "xMinYMin meet");
      self.fitWidth();
    }
    function aspect() { return Math.max(0.1, box.clientWidth / Math.max(1, box.clientHeight)); }
    function apply() {
      vb.h = vb.w / aspect();
      // keep the drawing in view: inside it when it is bigger than the view, centred otherwise
      vb.y = H > vb.h ? Math.min(Math.max(vb.y, 0), H - vb.h) : (H - vb.h) / 2;
      vb.x = W > vb.w ? Math.min(Math.max(vb.x, 0), W - vb.w) : (W - vb.w) / 2;
      svg.setAttribute("viewBox", vb.x + " " + vb.y + " " + vb.w + " " + vb.h);
      box.dataset.zoom = (W / vb.w).toFixed(3);
    }
    var self = {
      W: W, H: H, vb: vb, load: load,
      fitWidth: function () { vb.w = W; vb.x = 0; apply(); },
      fitAll: function () {
        vb.w = Math.max(W, H * aspect()); vb.x = (W - vb.w) / 2; vb.y = 0; apply();
      },
      zoom: function (f, cx, cy) {
        if (cx === undefined) { cx = vb.x + vb.w / 2; cy = vb.y + vb.h / 2; }
        var nw = Math.min(Math.max(vb.w * f, 40), Math.max(W, H * aspect()) * 4);
        var k = nw / vb.w;
        vb.x = cx - (cx - vb.x) * k; vb.y = cy - (cy - vb.y) * k; vb.w = nw; apply();
      },
      centreOn: function (y, x) {
        vb.y = y - vb.w / aspect() / 2;
        if (x !== undefined && (x < vb.x || x > vb.x + vb.w)) vb.x = x - vb.w / 2;
        apply();
      },
      apply: apply
    };
    function point(e) {
      var r = svg.getBoundingClientRect(), s = vb.w / Math.max(1, r.width);
      return [vb.x + (e.clientX - r.left) * s, vb.y + (e.clientY - r.top) * s];
    }
    box.addEventListener("wheel", function (e) {
      e.preventDefault();
      if (e.ctrlKey || e.metaKey) {
        var p = point(e); self.zoom(Math.exp(e.deltaY * 0.002), p[0], p[1]);
      } else {
        var s = vb.w / Math.max(1, box.clientWidth);
        if (e.shiftKey) vb.x += e.deltaY * s; else { vb.y += e.deltaY * s; vb.x += e.deltaX * s; }
        apply();
      }
    }, {passive: false});
    var drag = null;
    box.addEventListener("pointerdown", function (e) {
      drag = {x: e.clientX, y: e.clientY, vx: vb.x, vy: vb.y, moved: false};
    });
    window.addEventListener("pointermove", function (e) {
      if (!drag) return;
      var s = vb.w / Math.max(1, box.clientWidth);
      if (Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 3) drag.moved = true;
      vb.x = drag.vx - (e.clientX - drag.x) * s; vb.y = drag.vy - (e.clientY - drag.y) * s;
      apply();
    });
    window.addEventListener("pointerup", function () {
      if (drag && drag.moved) box.dataset.dragged = "1";
      drag = null;
      setTimeout(function () { delete box.dataset.dragged; }, 0);
    });
    window.addEventListener("resize", apply);
    var tools = box.parentNode.querySelector(".tools");
    if (tools) {
      tools.addEventListener("click", function (e) {
        var b = e.target.closest("button"); if (!b) return;
        ({"fit-width": self.fitWidth, "fit-all": self.fitAll,
          "zoom-in": function () { self.zoom(1 / 1.4); },
          "zoom-out": function () { self.zoom(1.4); }})[b.dataset.act]();
      });
    }
    load(svg);
    return self;
  }

  /* -- the op view of one step ---------------------------------------------------------------- */
  var modes = {};
  DATA.modes.forEach(function (m) {
    var sec = document.querySelector('.mode-graph[data-mode="' + CSS.escape(m.name) + '"]');
    if (!sec) return;
    var chainBox = sec.querySelector(".viewer.chain-box");
    var chainSvg = chainBox.querySelector("svg");
    modes[m.name] = {data: m, sec: sec, chain: Viewer(chainBox, chainSvg), chainSvg: chainSvg,
                     panel: sec.querySelector(".opview"), ops: null};
    chainBox.addEventListener("click", function (e) {
      if (chainBox.dataset.dragged) return;
      var g = e.target.closest("[data-step]");
      if (g) openStep(m.name, g.dataset.step);
    });
  });

  function probeName(m, order) { var p = m.probes[order]; return p ? p[0] : "#" + order; }

  /* every drawing is built with DOM calls: text goes in as textContent and values as
     attributes, so nothing from the data is ever parsed as markup */
  function el(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function num(x) { x = +x; return isFinite(x) ? x : 0; }

  function opSvg(m, key, v) {
    var svg = el("svg", {width: num(v.w), height: num(v.h), "class": "ops"});
    var defs = el("defs"), mk = el("marker", {id: "gc-oparrow", viewBox: "0 0 8 8", refX: 7,
      refY: 4, markerWidth: 5, markerHeight: 5, orient: "auto"});
    mk.appendChild(el("path", {d: "M0,0L8,4L0,8z", fill: "#6e7781"}));
    defs.appendChild(mk); svg.appendChild(defs);
    v.e.forEach(function (e) {
      var pts = e[3], d = "";
      for (var i = 0; i < pts.length; i += 2) {
        var x = num(pts[i]), y = num(pts[i + 1]);
        if (i === 0) y += OPH / 2;
        if (i === pts.length - 2) y -= OPH / 2;
        d += (i ? " L" : "M") + x + "," + y;
      }
      // no gradient passes along an edge out of an op whose gradient was not asked for
      var to = v.n[e[1]], cls = e[2] === 2 ? "cut" : e[2] === 1 ? "stops" :
        (to[5] === "ok" && v.n[e[0]][5] !== "not_asked" ? "ok" : "none");
      var path = el("path", {"class": "oe " + cls, d: d, "marker-end": "url(#gc-oparrow)"});
      if (cls === "ok" && to[6] !== null) {
        path.style.stroke = colour(0.15 + 0.7 * num(to[6]));
        path.style.strokeWidth = (0.8 + 2 * num(to[6])).toFixed(2);
      }
      var tip = cls === "cut" ? "the break: the autograd graph ends here" :
        cls === "stops" ? "the gradient stops on this edge: it reaches the op below, not the one above" : "";
      if (tip) path.appendChild(el("title", {}, tip));
      svg.appendChild(path);
    });
    v.n.forEach(function (n, i) {
      var x = num(n[0]), y = num(n[1]), isProbe = n[2] === -2, st = String(n[5]), t = n[6];
      var fill = st === "ok" && t !== null ? colour(num(t)) : MARK[st] || "#eee";
      var dark = st === "ok" && t !== null && t < 0.6;
      var label, tip;
      if (isProbe) {
        var nm = probeName(m, n[3]);
        label = (n[7] ? "from " : "") + nm;
        tip = "probe " + nm + " · " + (st === "ok" ? "|g| " + fmt(n[4]) : WORDS[st]);
      } else {
        label = String(S[n[2]]);
        var where = n[3] >= 0 ? S[n[3]] : "(line not recorded)";
        tip = S[n[2]] + " · " + (st === "ok" ? "|g| " + fmt(n[4]) : n[4] === null &&
          !v.detail ? "|g| not recorded" : WORDS[st]) + " · " + where;
      }
      if (label.length > 19) label = label.substr(0, 18) + "…";
      var g = el("g", {"class": "on " + (isProbe ? "probe " : "op ") + st +
        (n[7] && !isProbe ? " hit" : ""), "data-i": i, "data-tip": tip});
      g.appendChild(el("title", {}, tip));
      g.appendChild(el("rect", {x: x, y: y, width: OPW, height: OPH, rx: isProbe ? 12 : 3,
        fill: fill}));
      g.appendChild(el("text", {x: x + OPW / 2, y: y + 16, fill: dark ? "#fff" : "#1f2328"},
        label));
      svg.appendChild(g);
    });
    return svg;
  }

  /* a line of text with parts: [text, class] pairs (class null: plain), built as DOM nodes */
  function say(box, parts) {
    box.textContent = "";
    parts.forEach(function (p) {
      if (!p) return;
      var node = document.createElement(p[1] === "strong" ? "strong" : p[1] === "div" ? "div" : "span");
      if (p[1] && p[1] !== "strong") node.className = p[1] === "div" ? "opinfo muted" : p[1];
      node.textContent = p[0];
      box.appendChild(p[1] ? node : document.createTextNode(p[0]));
    });
  }

  function openStep(mode, key, highlight) {
    var M = modes[mode]; if (!M) return false;
    var m = M.data, v = m.views[key];
    var panel = M.panel;
    panel.querySelectorAll(".opview-empty").forEach(function (x) { x.hidden = true; });
    var head = panel.querySelector(".ophead"), box = panel.querySelector(".viewer.op-box");
    var label = key === "start" || key === "end" ? key : "step " + key;
    if (!v) {
      say(head, [[label, "strong"], [": no ops recorded here (its probes are leaves, or the graph capture was off)."]]);
      box.textContent = ""; box.hidden = true; panel.dataset.step = key; return true;
    }
    var nOps = v.n.filter(function (n) { return n[2] !== -2; }).length;
    var stops = v.e.filter(function (e) { return e[2] === 1; }).length;
    var cut = v.e.some(function (e) { return e[2] === 2; });
    var notAsked = v.n.filter(function (n) { return n[2] !== -2 && n[5] === "not_asked"; }).length;
    say(head, [[label, "strong"], [": " + nOps + " ops between " + (v.n.length - nOps) + " probes"],
      cut && ["; "], cut && ["the graph ends here (red dashed)", "bad"],
      stops && ["; "], stops && ["the gradient stops on " + stops + " edge(s) (red)", "bad"],
      notAsked && ["; "], notAsked && [notAsked + " read weights only (pale: their gradient was not asked for)", "muted"],
      !v.detail && ["; "], !v.detail && ["|g| and source lines of ops not recorded (" + (m.detail_skipped || "") + ")", "muted"],
      ["hover an op for its |g| and source line", "div"]]);
    box.hidden = false;
    box.textContent = "";
    box.appendChild(opSvg(m, key, v));
    var viewer = M.ops;
    if (viewer) viewer.load(box.querySelector("svg"));
    else {
      viewer = M.ops = Viewer(box, box.querySelector("svg"));
      box.addEventListener("mouseover", function (e) {
        var g = e.target.closest(".on"); if (!g) return;
        var info = panel.querySelector(".opinfo");
        if (info) info.textContent = g.dataset.tip;
      });
    }
    viewer.fitAll();
    if (viewer.vb.w > 1400) { viewer.zoom(1400 / viewer.vb.w, 0, 0); viewer.vb.y = 0; viewer.apply(); }
    panel.dataset.step = key;
    var bad = v.e.filter(function (e) { return e[2] === 2; })[0] || v.e.filter(function (e) { return e[2] === 1; })[0];
    if (bad && !highlight) {  // a failing step opens on its break
      var pts = bad[3], k = Math.floor(pts.length / 4) * 2;
      viewer.centreOn(pts[k + 1], pts[k]);
    }
    if (highlight) {
      var first = null;
      box.querySelectorAll(".on").forEach(function (g) {
        var n = v.n[+g.dataset.i];
        var text = (n[2] === -2 ? probeName(m, n[3]) : S[n[2]] + " " + (n[3] >= 0 ? S[n[3]] : "")).toLowerCase();
        if (text.indexOf(highlight) >= 0) { g.classList.add("match"); if (!first) first = n; }
      });
      if (first) viewer.centreOn(first[1], first[0]);
    }
    M.chainSvg.querySelectorAll(".row.open").forEach(function (r) { r.classList.remove("open"); });
    var row = M.chainSvg.querySelector('.row[data-step="' + CSS.escape(key) + '"]');
    if (row) {
      row.classList.add("open");
      var r = row.querySelector("rect");
      M.chain.centreOn(+r.getAttribute("y") + 25);
    }
    return true;
  }
  window.gcOpenStep = openStep;

  /* -- the heat map opens a step too ---------------------------------------------------------- */
  document.querySelectorAll(".heatmap-wrap").forEach(function (w) {
    w.addEventListener("click", function (e) {
      var c = e.target.closest("[data-step]"); if (!c) return;
      if (openStep(w.dataset.mode, c.dataset.step)) {
        modes[w.dataset.mode].sec.scrollIntoView({block: "start"});
      }
    });
  });

  /* -- search: probes by name or kind, ops by name or source line ----------------------------- */
  var input = document.getElementById("gc-search"), results = document.getElementById("gc-results");
  function search(q) {
    q = q.trim().toLowerCase();
    document.querySelectorAll(".node.match").forEach(function (n) { n.classList.remove("match"); });
    results.textContent = "";
    if (!q) return [];
    var hits = [];
    Object.keys(modes).forEach(function (mode) {
      var M = modes[mode];
      M.chainSvg.querySelectorAll(".node").forEach(function (g) {
        if ((g.dataset.name + " " + g.dataset.kind).toLowerCase().indexOf(q) >= 0) {
          g.classList.add("match");
          hits.push({mode: mode, step: g.dataset.step || "start", what: "probe " + g.dataset.name});
        }
      });
      Object.keys(M.data.views).forEach(function (key) {
        var n = 0, names = {};
        M.data.views[key].n.forEach(function (nd) {
          if (nd[2] === -2) return;
          var t = (S[nd[2]] + " " + (nd[3] >= 0 ? S[nd[3]] : "")).toLowerCase();
          if (t.indexOf(q) >= 0) { n++; names[S[nd[2]]] = 1; }
        });
        if (n) hits.push({mode: mode, step: key, what: n + " op(s): " + Object.keys(names).slice(0, 4).join(", ")});
      });
    });
    hits.slice(0, 40).forEach(function (h, i) {
      var li = document.createElement("li"), a = document.createElement("a");
      a.href = "#"; a.dataset.i = i;
      a.textContent = h.mode + " · " + (h.step === "start" || h.step === "end" ? h.step : "step " + h.step) + " · " + h.what;
      li.appendChild(a); results.appendChild(li);
    });
    if (hits.length > 40 || !hits.length) {
      var more = document.createElement("li");
      more.className = "muted";
      more.textContent = hits.length ? (hits.length - 40) + " more" : "no probe or op matches";
      results.appendChild(more);
    }
    results.onclick = function (e) {
      var a = e.target.closest("a"); if (!a) return;
      e.preventDefault();
      var h = hits[+a.dataset.i];
      openStep(h.mode, h.step, q);
      modes[h.mode].sec.scrollIntoView({block: "start"});
    };
    return hits;
  }
  if (input) {
    input.addEventListener("input", function () { search(input.value); });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter") {
        var a = results.querySelector("a"); if (a) a.click();
      }
    });
  }
  window.gcSearch = search;

  document.addEventListener("click", function (e) {
    var a = e.target.closest("[data-open-mode]"); if (!a) return;
    e.preventDefault();
    if (openStep(a.dataset.openMode, a.dataset.openStep)) modes[a.dataset.openMode].sec.scrollIntoView({block: "start"});
  });

  /* -- a failing run opens on its break ------------------------------------------------------- */
  DATA.modes.forEach(function (m) { if (m.open !== null) openStep(m.name, m.open); });
  document.documentElement.dataset.ready = "1";
})();
{% endraw %}
