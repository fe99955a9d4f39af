"""The report's views as drawings (trees of :class:`.shapes.Node`), built from a record alone (no
torch, no Graphviz); :func:`.shapes.markup` turns them into the page's SVG:

- :func:`heatmap`: the overview, sampler step x probe kind, colour = log10 |g|, with distinct
  marks for no gradient, exactly zero, non-finite and not in the graph, the break outlined.
  Native tooltips, so it reads without JavaScript, at 4 steps as at 200.
- :func:`chain_view`: the step graph as a vertical chain (geometry: :func:`.layout.chain`), one
  row per sampler step, one column per probe kind; no edge through a node or a label.
- :func:`ratio`: one mode of a diff of two runs, step x probe kind, colour = |g| in B / in A.
- :func:`break_view`: what a failing run opens on: the located op, the user's source around it,
  every grad-disabling site, and the fix (data for the page's template).

The op view of each step is :mod:`.opviews`.
"""
from __future__ import annotations

import math
from typing import Any

from ..checks import break_point
from ..records import FlowReport, ProbeStats
from ..text import CAUSES, FIXES, KIND_WORDS, STATUS_WORDS, describe_break, fmt
from .layout import COL_W, NODE_H, NODE_W, ROW_H, chain, chain_path
from .shapes import Node, el

# -- colour ---------------------------------------------------------------------------------------

#: viridis at 9 stops (dark = small |g|, yellow = large)
_VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962",
            "#addc30", "#fde725"]
MARKS = {"unreached": ("#d9d9d9", "url(#gc-hatch)", "no gradient arrived"),
         "zero": ("#fd8d3c", None, "exactly zero"),
         "nonfinite": ("#d7301f", "url(#gc-cross)", "non-finite"),
         "not_in_graph": ("#ffffff", None, "not in the autograd graph")}


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def viridis(t: float) -> str:
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    a, b = _hex(_VIRIDIS[i]), _hex(_VIRIDIS[i + 1])
    f = t - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


class LogScale:
    """log10 |g| over the reached, finite, non-zero values given, mapped to [0, 1]."""

    def __init__(self, values: list[float | None]) -> None:
        logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
        self.lo, self.hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
        if self.hi - self.lo < 1e-9:
            self.lo, self.hi = self.lo - 0.5, self.hi + 0.5

    def __call__(self, v: float) -> float:
        return (math.log10(v) - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[int]:
        a, b = math.ceil(self.lo), math.floor(self.hi)
        step = max(1, math.ceil((b - a + 1) / 6))
        return list(range(a, b + 1, step))


def _tip(p: ProbeStats) -> str:
    at = f"step {p.step}" if p.step is not None else p.kind
    g = f"|g| {fmt(p.norm)}" if p.status == "ok" else STATUS_WORDS[p.status]
    sig = f" · sigma {p.sigma:.4g}" if p.sigma is not None else ""
    return f"{p.name} ({KIND_WORDS.get(p.kind, p.kind)}, {at}{sig}): {g}"


#: the patterns the marks are drawn with (every drawing that uses them carries them)
def defs() -> Node:
    return el("defs",
              el("pattern", el("rect", width=4, height=4, fill="#d9d9d9"),
                 el("line", x1=0, y1=0, x2=0, y2=4, stroke="#8c8c8c", stroke_width=1.6),
                 id="gc-hatch", width=4, height=4, patternUnits="userSpaceOnUse",
                 patternTransform="rotate(45)"),
              el("pattern", el("rect", width=4, height=4, fill="#d7301f"),
                 el("path", d="M0 0L4 4M4 0L0 4", stroke="#67000d", stroke_width=0.9),
                 id="gc-cross", width=4, height=4, patternUnits="userSpaceOnUse"))


def arrow(id_: str, size: int) -> Node:
    """An arrowhead marker."""
    return el("marker", el("path", d="M0,0L8,4L0,8z", fill="#6e7781"), id=id_,
              viewBox="0 0 8 8", refX=7, refY=4, markerWidth=size, markerHeight=size,
              orient="auto")


def fill_of(p: ProbeStats, scale: LogScale) -> tuple[str, str]:
    """(fill, stroke) of a probe's cell or node."""
    st = p.status
    if st == "ok":
        return viridis(scale(p.norm)), "none"
    fill, pattern, _ = MARKS[st]
    return pattern or fill, "#8c8c8c" if st == "not_in_graph" else "none"


# -- the overview ---------------------------------------------------------------------------------

#: row order of the heat map: the path first, then the noise, then anything of the user's
KIND_ORDER = ("state", "denoiser_in", "denoiser_out", "step_noise")


def _row_kind(kind: str) -> str:
    return "state" if kind == "x_T" else kind  # x_T is the state at the first step


def _kinds(r: FlowReport) -> list[str]:
    present = []
    for p in sorted(r.probes, key=lambda p: p.order):
        if p.step is not None and _row_kind(p.kind) not in present:
            present.append(_row_kind(p.kind))
    return [k for k in KIND_ORDER if k in present] + [k for k in present if k not in KIND_ORDER]


def heatmap(r: FlowReport, width: int = 1180) -> Node:
    """The overview of one mode (see the module docstring)."""
    g = _HeatGrid(r, width)
    items: list[Node] = [el("text", text=KIND_WORDS.get(k, k), x=g.left - 6,
                            y=f"{g.top + i * g.row_h + g.row_h * 0.68:.1f}", text_anchor="end")
                         for k, i in g.row.items()]
    outlines: list[Node] = []
    for (s, k), ps in g.by_cell.items():
        x, y = g.grid_x + g.col[s] * g.cell_w, g.top + g.row[k] * g.row_h
        h = g.row_h / len(ps)
        for j, p in enumerate(ps):
            items += g.cell(p, x, y + j * h, g.cell_w, h, s, outlines)
    y_state = g.top + g.row.get("state", 0) * g.row_h
    ends = [(g.left + j * g.end_w, p) for j, p in enumerate(g.first)] + \
        [(g.grid_x + g.grid_w + 8 + j * g.end_w, p) for j, p in enumerate(g.last)]
    for x, p in ends:
        items += g.cell(p, x, y_state, g.end_w - 4, g.row_h, None, outlines)
        items.append(el("text", text=p.name, x=f"{x + (g.end_w - 4) / 2:.1f}", y=g.top - 6,
                        text_anchor="middle"))
    # the x axis: step numbers, no closer than 32 px
    gy = g.top + g.row_h * max(1, len(g.kinds))
    every = max(1, math.ceil(32 / g.cell_w))
    for i, s in enumerate(g.steps):
        if i % every == 0 or i == len(g.steps) - 1 and (i % every) * g.cell_w >= 24:
            items.append(el("text", text=str(s), x=f"{g.grid_x + (i + 0.5) * g.cell_w:.1f}",
                            y=gy + 13, text_anchor="middle"))
    items.append(el("text", text="sampler step", x=f"{g.grid_x + g.grid_w / 2:.1f}", y=gy + 28,
                    text_anchor="middle"))
    legend, x = _heat_legend(g.left, gy + 42, g.scale, g.bp is not None)
    w = max(g.total_w, int(x))  # the legend sets the width of a short run's map
    return el("svg", defs(), el("g", *items, *outlines, *legend, class_="hm"), class_="heatmap",
              xmlns="http://www.w3.org/2000/svg", width=w, height=g.height,
              viewBox=f"0 0 {w} {g.height}", role="img",
              aria_label=f"gradient norm per step and probe kind, {r.mode}")


class _HeatGrid:
    """The heat map's grid: its rows (probe kinds), columns (steps), cells and ends."""

    left, right, top, row_h, end_w = 112, 120, 22, 22, 34

    def __init__(self, r: FlowReport, width: int) -> None:
        self.steps = sorted({p.step for p in r.probes if p.step is not None})
        self.kinds = _kinds(r)
        self.scale = LogScale([p.norm for p in r.probes if p.status == "ok"])
        ends = [p for p in sorted(r.probes, key=lambda p: p.order) if p.step is None]
        self.first = [p for p in ends if p.kind in ("z0", "x_T")]
        self.last = [p for p in ends if p.kind not in ("z0", "x_T")]
        n_end = len(self.first) + len(self.last)
        self.cell_w = max(3.0, min(48.0, (width - self.left - self.right - self.end_w * n_end
                                          - 16) / max(1, len(self.steps))))
        self.grid_x = self.left + self.end_w * len(self.first) + 8
        self.grid_w = self.cell_w * max(1, len(self.steps))
        self.height = self.top + self.row_h * max(1, len(self.kinds)) + 74
        self.total_w = int(self.grid_x + self.grid_w + 8 + self.end_w * len(self.last)
                           + self.right)
        self.col = {s: i for i, s in enumerate(self.steps)}
        self.row = {k: i for i, k in enumerate(self.kinds)}
        self.bp = break_point(r)
        self.marked = {self.bp[0].order, self.bp[1].order} if self.bp else set()
        self.by_cell: dict[tuple[int, str], list[ProbeStats]] = {}
        for p in sorted(r.probes, key=lambda p: p.order):
            if p.step is not None:
                self.by_cell.setdefault((p.step, _row_kind(p.kind)), []).append(p)

    def cell(self, p: ProbeStats, x: float, y: float, w: float, h: float, step: int | None,
             outlines: list[Node]) -> list[Node]:
        fill, stroke = fill_of(p, self.scale)
        out = [el("rect", el("title", text=_tip(p)), class_="c", x=f"{x:.2f}", y=f"{y:.2f}",
                  width=f"{max(w - 0.6, 1):.2f}", height=f"{max(h - 0.6, 1):.2f}", fill=fill,
                  stroke=stroke,
                  stroke_dasharray="2,1.5" if p.status == "not_in_graph" else None,
                  data_step=step, data_probe=p.order)]
        if p.status == "zero" and w >= 9:
            out.append(el("text", text="0", class_="zero", x=f"{x + w / 2:.1f}",
                          y=f"{y + h * 0.7:.1f}", text_anchor="middle"))
        if p.order in self.marked:
            outlines.append(el("rect", x=f"{x - 1.5:.2f}", y=f"{y - 1.5:.2f}",
                               width=f"{w + 2.4:.2f}", height=f"{h + 2.4:.2f}", fill="none",
                               stroke="#e4002b", stroke_width=2.5, class_="break-mark"))
        return out


def _heat_legend(left: int, ly: int, scale: LogScale, has_break: bool) -> tuple[list[Node], float]:
    """The colour bar with its log ticks, then the marks: (the nodes, where they end)."""
    bar_w = 200
    out = [el("rect", x=f"{left + i * bar_w / 40:.1f}", y=ly, width=f"{bar_w / 40 + 0.3:.2f}",
              height=10, fill=viridis(i / 39)) for i in range(40)]
    for t in scale.ticks():
        x = left + bar_w * (t - scale.lo) / (scale.hi - scale.lo)
        out.append(el("text", text=f"1e{t}", x=f"{x:.1f}", y=ly + 22, text_anchor="middle"))
    out.append(el("text", text="|g|", x=left - 6, y=ly + 9, text_anchor="end"))
    x = left + bar_w + 24
    for st in ("unreached", "zero", "nonfinite", "not_in_graph"):
        fill, pattern, words = MARKS[st]
        dash = st == "not_in_graph"
        out += [el("rect", x=x, y=ly, width=14, height=11, fill=pattern or fill,
                   stroke="#8c8c8c" if dash else None, stroke_dasharray="2,1.5" if dash else None),
                el("text", text=words, x=x + 18, y=ly + 10)]
        x += 26 + 6.2 * len(words)
    if has_break:
        out += [el("rect", x=x, y=ly - 1, width=14, height=12, fill="none", stroke="#e4002b",
                   stroke_width=2.5), el("text", text="the break", x=x + 20, y=ly + 10)]
        x += 90
    return out, x


# -- the step chain -------------------------------------------------------------------------------

def chain_view(r: FlowReport, ch: dict[str, Any] | None = None) -> Node:
    """The step chain: nodes filled by log |g| (the heat map's colours)."""
    ch = ch or chain(r)
    scale = LogScale([p.norm for p in r.probes if p.status == "ok"])
    by_order = {p.order: p for p in r.probes}
    pos = ch["pos"]
    right = ch["label_w"] + ch["ncols"] * COL_W
    w, h = ch["width"], ch["height"]
    bp = break_point(r)
    items: list[Node] = []
    for ri, (name, ps) in enumerate(ch["rows"]):
        y = 16 + ri * ROW_H
        sig = next((p.sigma for p in ps if p.sigma is not None), None)
        step = name if name not in ("start", "end") else None
        items.append(el("g", el("rect", class_="rowbg", x=2, y=y - 8, width=w - 4,
                                height=ROW_H - 4, rx=6),
                        el("text", text=f"step {name}" if step else name, class_="rowlabel",
                           x=10, y=y + 14),
                        el("text", text=f"sigma {sig:.4g}", class_="sigma", x=10, y=y + 29)
                        if sig is not None else None, class_="row", data_step=step))
    for lane, (a, b, kind) in enumerate(ch["edges"]):
        dst = by_order[b]
        if kind == "stub":
            bx, by = pos[b]
            items.append(el("text", text=f"from {by_order[a].name}", class_="stub", x=bx - 4,
                            y=by - 3, text_anchor="end"))
            continue
        d = chain_path(pos[a], pos[b], ch["row_of"][a], ch["row_of"][b], right, lane)
        items.append(el("path", el("title", text=f"{by_order[a].name} -> {dst.name}"),
                        class_="e " + ("ok" if dst.status == "ok" else dst.status), d=d,
                        stroke_width=f"{0.8 + 2.4 * scale(dst.norm):.2f}"
                        if dst.status == "ok" else None, marker_end="url(#gc-arrow)"))
    if bp is not None and bp[0].order in pos and bp[1].order in pos:
        a, b, _ = bp
        d = chain_path(pos[a.order], pos[b.order], ch["row_of"][a.order], ch["row_of"][b.order],
                       right, 3)
        items.append(el("path", el("title", text=f"the break: {a.name} -> {b.name}"),
                        class_="break-edge", d=d))
    marked = (bp[0].order, bp[1].order) if bp else ()
    items += [_chain_node(p, pos[p.order], scale, p.order in marked)
              for p in r.probes if p.order in pos]
    return el("svg", defs(), el("defs", arrow("gc-arrow", 6)), el("g", *items, class_="viewport"),
              class_="chain", xmlns="http://www.w3.org/2000/svg", width=w, height=h,
              viewBox=f"0 0 {w} {h}", data_mode=r.mode)


_NODE_WORDS = {"zero": "|g| = 0", "nonfinite": "non-finite", "unreached": "no gradient",
               "not_in_graph": "not in graph"}


def _chain_node(p: ProbeStats, at: tuple[float, float], scale: LogScale, brk: bool) -> Node:
    x, y = at
    fill, stroke = fill_of(p, scale)
    t = scale(p.norm) if p.status == "ok" else 0.0
    txt = "#ffffff" if p.status == "ok" and t < 0.6 else "#1f2328"
    g = f"|g| {fmt(p.norm)}" if p.status == "ok" else _NODE_WORDS[p.status]
    name = p.name if len(p.name) <= 17 else p.name[:16] + "…"
    return el("g", el("title", text=_tip(p)),
              el("rect", x=x, y=y, width=NODE_W, height=NODE_H, rx=5, fill=fill,
                 stroke=stroke if stroke != "none" else "#57606a"),
              el("text", text=name, x=x + NODE_W / 2, y=y + 14, fill=txt),
              el("text", text=g, class_="g", x=x + NODE_W / 2, y=y + 27, fill=txt),
              class_=f"node {p.status}" + (" at-break" if brk else ""), data_probe=p.order,
              data_step=p.step, data_name=p.name, data_kind=p.kind)


# -- what a failing run opens on ------------------------------------------------------------------

def break_view(r: FlowReport) -> dict[str, Any] | None:
    """The located break with its source and fix, or None when nothing was located."""
    loc = r.locator
    ev = loc.primary if loc and loc.ran and loc.primary else None
    if ev is None:
        return None
    return {"sentence": describe_break(ev), "cause": CAUSES.get(ev.cause, ev.cause),
            "fix": FIXES.get(ev.cause), "location": ev.location, "function": ev.function,
            "snippet": ev.source, "first_line": ev.source_line, "line": _line_no(ev.location),
            "sites": list(ev.sites), "step": ev.step, "op": ev.op, "via": ev.via}


def _line_no(location: str | None) -> int | None:
    if not location or ":" not in location:
        return None
    tail = location.rsplit(":", 1)[1]
    return int(tail) if tail.isdigit() else None


# -- a diff of two runs ---------------------------------------------------------------------------

def _diverging(lr: float) -> str:
    """log10 ratio -> colour: blue (B smaller) .. white (equal) .. orange (B larger), +-2 decades."""
    t = max(-1.0, min(1.0, lr / 2.0))
    lo, mid, hi = (33, 102, 172), (247, 247, 247), (230, 97, 1)
    end = hi if t > 0 else lo
    f = abs(t)
    return "#" + "".join(f"{round(m + (e - m) * f):02x}" for m, e in zip(mid, end))


def ratio(md: Any, width: int = 1180) -> Node | None:
    """One mode of a diff as a strip: step x probe kind, colour = log10(|g| in B / |g| in A);
    a black cross where a probe's status changed (gradient lost or gained). None: no steps."""
    probes = [p for p in md.probes if p.step is not None]
    steps = sorted({p.step for p in probes})
    kinds = [k for k in KIND_ORDER if any(_row_kind(p.kind) == k for p in probes)] + sorted(
        {_row_kind(p.kind) for p in probes} - set(KIND_ORDER))
    if not steps:
        return None
    left, top, row_h = 112, 8, 20
    cell_w = max(3.0, min(48.0, (width - left - 40) / len(steps)))
    col = {s: i for i, s in enumerate(steps)}
    row = {k: i for i, k in enumerate(kinds)}
    h = top + row_h * len(kinds) + 60
    w = int(max(left + cell_w * len(steps) + 20, 640))
    items = [el("text", text=KIND_WORDS.get(k, k), x=left - 6, y=top + i * row_h + 14,
                text_anchor="end") for k, i in row.items()]
    cells: dict[tuple[int, str], list[Any]] = {}
    for p in probes:
        cells.setdefault((p.step, _row_kind(p.kind)), []).append(p)
    for (s, k), ps in cells.items():
        x, y = left + col[s] * cell_w, top + row[k] * row_h
        ch = row_h / len(ps)
        for j, p in enumerate(ps):
            items += _ratio_cell(p, x, y + j * ch, cell_w, ch)
    gy = top + row_h * len(kinds)
    every = max(1, math.ceil(32 / cell_w))
    items += [el("text", text=str(s), x=f"{left + (i + 0.5) * cell_w:.1f}", y=gy + 13,
                 text_anchor="middle") for i, s in enumerate(steps) if i % every == 0]
    ly = gy + 26
    items += [el("rect", x=left + i * 5, y=ly, width=5.3, height=10,
                 fill=_diverging(-2 + 4 * i / 39)) for i in range(40)]
    items += [el("text", text=lab, x=f"{left + (v + 2) / 4 * 200:.1f}", y=ly + 22,
                 text_anchor="middle")
              for v, lab in ((-2, "1/100"), (-1, "1/10"), (0, "1"), (1, "10"), (2, "100"))]
    items += [el("text", text="B/A", x=left - 6, y=ly + 9, text_anchor="end"),
              el("path", d=f"M{left + 230},{ly}l10,10m0,-10l-10,10", stroke="#000",
                 stroke_width=1.4),
              el("text", text="status changed (gradient lost or gained)", x=left + 246,
                 y=ly + 9)]
    return el("svg", el("g", *items, class_="ratio-g"), class_="ratio",
              xmlns="http://www.w3.org/2000/svg", width=w, height=h, viewBox=f"0 0 {w} {h}")


def _ratio_cell(p: Any, x: float, y: float, w: float, h: float) -> list[Node]:
    r = p.ratio
    changed = p.status_a != p.status_b
    tip = (f"{p.name} (step {p.step}): {fmt(p.a)} -> {fmt(p.b)}"
           + (f", x{r:.3g}" if r is not None else "")
           + (f", {p.status_a} -> {p.status_b}" if changed else ""))
    out = [el("rect", el("title", text=tip), x=f"{x:.2f}", y=f"{y:.2f}",
              width=f"{max(w - 0.6, 1):.2f}", height=f"{max(h - 0.6, 1):.2f}",
              fill="#ffffff" if r is None else _diverging(math.log10(r)), stroke="#d0d7de",
              stroke_width=0.3)]
    if changed:
        out.append(el("path", d=f"M{x + 1:.1f},{y + 1:.1f}L{x + w - 1.6:.1f},{y + h - 1.6:.1f}"
                               f"M{x + w - 1.6:.1f},{y + 1:.1f}L{x + 1:.1f},{y + h - 1.6:.1f}",
                      stroke="#000", stroke_width=1.4))
    return out
