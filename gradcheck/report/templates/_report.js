{% raw %}
/* gradcheck report: pan/zoom on the step chains and op views, a step's op graph on click, search.
   Everything the page says is in the HTML already; this only adds interaction. No network. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gc-data").textContent);
  document.documentElement.classList.add("js");

  /* -- a pan/zoom viewer: the wheel scrolls the page, ctrl+wheel zooms, drag pans ------------ */
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
      // the map convention: ctrl+wheel (a pinch) zooms; the plain wheel scrolls the page
      if (!(e.ctrlKey || e.metaKey)) return;
      e.preventDefault();
      var p = point(e); self.zoom(Math.exp(e.deltaY * 0.002), p[0], p[1]);
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
    var views = {};
    sec.querySelectorAll("template[data-step]").forEach(function (t) { views[t.dataset.step] = t; });
    modes[m.name] = {data: m, sec: sec, chain: Viewer(chainBox, chainSvg), chainSvg: chainSvg,
                     panel: sec.querySelector(".opview"), ops: null, views: views};
    chainBox.addEventListener("click", function (e) {
      if (chainBox.dataset.dragged) return;
      var g = e.target.closest("[data-step]");
      if (g) openStep(m.name, g.dataset.step);
    });
  });

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

  /* a step's op view is drawn in the page already (a <template> per step): opening it shows
     a copy of it */
  function openStep(mode, key, highlight) {
    var M = modes[mode]; if (!M) return false;
    var panel = M.panel, tpl = M.views[key];
    panel.querySelectorAll(".opview-empty").forEach(function (x) { x.hidden = true; });
    var head = panel.querySelector(".ophead"), box = panel.querySelector(".viewer.op-box");
    var label = key === "start" || key === "end" ? key : "step " + key;
    if (!tpl) {
      say(head, [[label, "strong"], [": no ops recorded here (its probes are leaves, or the graph capture was off)."]]);
      box.textContent = ""; box.hidden = true; panel.dataset.step = key; return true;
    }
    var view = tpl.content.cloneNode(true);
    head.textContent = "";
    head.appendChild(view.querySelector(".ophead-text"));
    box.hidden = false;
    box.textContent = "";
    box.appendChild(view.querySelector("svg"));
    var viewer = M.ops;
    if (viewer) viewer.load(box.querySelector("svg"));
    else {
      viewer = M.ops = Viewer(box, box.querySelector("svg"));
      box.addEventListener("mouseover", function (e) {
        var g = e.target.closest(".on"); if (!g) return;
        var info = panel.querySelector(".opinfo");
        var tip = g.querySelector("title");
        if (info && tip) info.textContent = tip.textContent;
      });
    }
    viewer.fitAll();
    if (viewer.vb.w > 1400) { viewer.zoom(1400 / viewer.vb.w, 0, 0); viewer.vb.y = 0; viewer.apply(); }
    panel.dataset.step = key;
    var svg = box.querySelector("svg");
    if (svg.dataset.fx !== undefined && !highlight) {  // a failing step opens on its break
      viewer.centreOn(+svg.dataset.fy, +svg.dataset.fx);
    }
    if (highlight) {
      var first = null;
      box.querySelectorAll(".on").forEach(function (g) {
        if (g.dataset.q.indexOf(highlight) >= 0) { g.classList.add("match"); if (!first) first = g; }
      });
      if (first) {
        var fr = first.querySelector("rect");
        viewer.centreOn(+fr.getAttribute("y"), +fr.getAttribute("x"));
      }
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
      Object.keys(M.views).forEach(function (key) {
        var n = 0, names = {};
        M.views[key].content.querySelectorAll(".on.op").forEach(function (g) {
          if (g.dataset.q.indexOf(q) >= 0) { n++; names[g.dataset.op] = 1; }
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
