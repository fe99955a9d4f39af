"""The report's explorable views, built from a record alone (no torch, no Graphviz):

- :func:`heatmap_svg`: the overview, sampler step x probe kind, colour = log10 |g|, with distinct
  marks for no gradient, exactly zero, non-finite and not in the graph, the break outlined. Plain
  SVG (native tooltips), so it reads without JavaScript, at 4 steps as at 200.
- :func:`chain` / :func:`chain_svg`: the step graph as a vertical chain, one row per sampler step,
  one column per probe kind; edges leave a node's bottom or side and enter the next one's top or
  side; edges that skip a row run in a gutter to the right, an edge from z0 into a later step is
  a short stub: no zig-zag, no edge through a node or a label.
- :func:`op_views`: per sampler step, the ops of its regions laid out on their own (layered, as
  a Sugiyama layout: longest-path layers, dummy nodes for long edges, barycentre ordering) with
  each op's |g|, source line and the edges where the gradient stops, as compact JSON the page's
  script draws on demand.
- :func:`break_view`: what a failing run opens on: the located op, the user's source around it,
  every grad-disabling site, and the fix.
"""
from __future__ import annotations

import html
import math
from typing import Any

from ..checks import break_point
from ..records import FlowReport, OpRegion, ProbeStats
from ..text import CAUSES, FIXES, KIND_WORDS, STATUS_WORDS, describe_break, fmt

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


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _tip(p: ProbeStats) -> str:
    at = f"step {p.step}" if p.step is not None else p.kind
    g = f"|g| {fmt(p.norm)}" if p.status == "ok" else STATUS_WORDS[p.status]
    sig = f" · sigma {p.sigma:.4g}" if p.sigma is not None else ""
    return f"{p.name} ({KIND_WORDS.get(p.kind, p.kind)}, {at}{sig}): {g}"


_DEFS = ('<defs><pattern id="gc-hatch" width="4" height="4" patternUnits="userSpaceOnUse" '
         'patternTransform="rotate(45)"><rect width="4" height="4" fill="#d9d9d9"/>'
         '<line x1="0" y1="0" x2="0" y2="4" stroke="#8c8c8c" stroke-width="1.6"/></pattern>'
         '<pattern id="gc-cross" width="4" height="4" patternUnits="userSpaceOnUse">'
         '<rect width="4" height="4" fill="#d7301f"/><path d="M0 0L4 4M4 0L0 4" '
         'stroke="#67000d" stroke-width="0.9"/></pattern></defs>')


def _fill(p: ProbeStats, scale: LogScale) -> tuple[str, str]:
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


def heatmap_svg(r: FlowReport, width: int = 1180) -> str:
    """The overview of one mode as an SVG string (see the module docstring)."""
    steps = sorted({p.step for p in r.probes if p.step is not None})
    kinds = _kinds(r)
    scale = LogScale([p.norm for p in r.probes if p.status == "ok"])
    left, right, top, row_h = 112, 120, 22, 22
    ends = [p for p in sorted(r.probes, key=lambda p: p.order) if p.step is None]
    first = [p for p in ends if p.kind in ("z0", "x_T")]
    last = [p for p in ends if p.kind not in ("z0", "x_T")]
    n = max(1, len(steps))
    end_w = 34
    cell_w = max(3.0, min(48.0, (width - left - right - end_w * (len(first) + len(last)) - 16) / n))
    grid_x = left + end_w * len(first) + 8
    grid_w = cell_w * n
    height = top + row_h * max(1, len(kinds)) + 74
    total_w = int(grid_x + grid_w + 8 + end_w * len(last) + right)
    col = {s: i for i, s in enumerate(steps)}
    row = {k: i for i, k in enumerate(kinds)}
    bp = break_point(r)
    marked = {bp[0].order, bp[1].order} if bp else set()
    out = [f'<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{total_w}" '
           f'height="{height}" viewBox="0 0 {total_w} {height}" role="img" '
           f'aria-label="gradient norm per step and probe kind, {_esc(r.mode)}">', _DEFS,
           '<style>.hm text{font:11px Helvetica,Arial,sans-serif;fill:#333}'
           '.hm rect.c{cursor:pointer}.hm rect.c:hover{stroke:#000;stroke-width:1.5}</style>',
           '<g class="hm">']
    for k, i in row.items():
        y = top + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + row_h * 0.68:.1f}" text-anchor="end">'
                   f'{_esc(KIND_WORDS.get(k, k))}</text>')
    outlines = []

    def cell(p: ProbeStats, x: float, y: float, w: float, h: float, step: int | None) -> None:
        fill, stroke = _fill(p, scale)
        ds = f' data-step="{_esc(step)}"' if step is not None else ""
        sw = ' stroke-dasharray="2,1.5"' if p.status == "not_in_graph" else ""
        out.append(f'<rect class="c" x="{x:.2f}" y="{y:.2f}" width="{max(w - 0.6, 1):.2f}" '
                   f'height="{max(h - 0.6, 1):.2f}" fill="{fill}" stroke="{stroke}"{sw}{ds} '
                   f'data-probe="{_esc(p.order)}"><title>{_esc(_tip(p))}</title></rect>')
        if p.status == "zero" and w >= 9:
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + h * 0.7:.1f}" text-anchor="middle" '
                       f'style="font-size:10px;fill:#7f2704;pointer-events:none">0</text>')
        if p.order in marked:
            outlines.append(f'<rect x="{x - 1.5:.2f}" y="{y - 1.5:.2f}" width="{w + 2.4:.2f}" '
                            f'height="{h + 2.4:.2f}" fill="none" stroke="#e4002b" '
                            f'stroke-width="2.5" class="break-mark"/>')

    by_cell: dict[tuple[int, str], list[ProbeStats]] = {}
    for p in sorted(r.probes, key=lambda p: p.order):
        if p.step is not None:
            by_cell.setdefault((p.step, _row_kind(p.kind)), []).append(p)
    for (s, k), ps in by_cell.items():
        x, y = grid_x + col[s] * cell_w, top + row[k] * row_h
        h = row_h / len(ps)
        for j, p in enumerate(ps):
            cell(p, x, y + j * h, cell_w, h, s)
    y_state = top + row.get("state", 0) * row_h
    for j, p in enumerate(first):
        x = left + j * end_w
        cell(p, x, y_state, end_w - 4, row_h, None)
        out.append(f'<text x="{x + (end_w - 4) / 2:.1f}" y="{top - 6}" text-anchor="middle">'
                   f'{_esc(p.name)}</text>')
    for j, p in enumerate(last):
        x = grid_x + grid_w + 8 + j * end_w
        cell(p, x, y_state, end_w - 4, row_h, None)
        out.append(f'<text x="{x + (end_w - 4) / 2:.1f}" y="{top - 6}" text-anchor="middle">'
                   f'{_esc(p.name)}</text>')
    # the x axis: step numbers, no closer than 32 px
    gy = top + row_h * max(1, len(kinds))
    every = max(1, math.ceil(32 / cell_w))
    for i, s in enumerate(steps):
        if i % every == 0 or i == len(steps) - 1 and (i % every) * cell_w >= 24:
            out.append(f'<text x="{grid_x + (i + 0.5) * cell_w:.1f}" y="{gy + 13}" '
                       f'text-anchor="middle">{_esc(s)}</text>')
    out.append(f'<text x="{grid_x + grid_w / 2:.1f}" y="{gy + 28}" text-anchor="middle">'
               f'sampler step</text>')
    out += outlines
    # the legend: the colour bar with its log ticks, then the marks
    ly = gy + 42
    bar_x, bar_w = left, 200
    for i in range(40):
        out.append(f'<rect x="{bar_x + i * bar_w / 40:.1f}" y="{ly}" width="{bar_w / 40 + 0.3:.2f}" '
                   f'height="10" fill="{viridis(i / 39)}"/>')
    for t in scale.ticks():
        x = bar_x + bar_w * (t - scale.lo) / (scale.hi - scale.lo)
        out.append(f'<text x="{x:.1f}" y="{ly + 22}" text-anchor="middle">1e{t}</text>')
    out.append(f'<text x="{bar_x - 6}" y="{ly + 9}" text-anchor="end">|g|</text>')
    x = bar_x + bar_w + 24
    for st in ("unreached", "zero", "nonfinite", "not_in_graph"):
        fill, pattern, words = MARKS[st]
        dash = ' stroke="#8c8c8c" stroke-dasharray="2,1.5"' if st == "not_in_graph" else ""
        out.append(f'<rect x="{x}" y="{ly}" width="14" height="11" fill="{pattern or fill}"{dash}/>'
                   f'<text x="{x + 18}" y="{ly + 10}">{words}</text>')
        x += 26 + 6.2 * len(words)
    if bp:
        out.append(f'<rect x="{x}" y="{ly - 1}" width="14" height="12" fill="none" '
                   f'stroke="#e4002b" stroke-width="2.5"/><text x="{x + 20}" y="{ly + 10}">'
                   f'the break</text>')
        x += 90
    out.append("</g></svg>")
    if x > total_w:  # the legend sets the width of a short run's map
        out[0] = out[0].replace(f'width="{total_w}"', f'width="{int(x)}"', 1).replace(
            f'viewBox="0 0 {total_w} ', f'viewBox="0 0 {int(x)} ', 1)
    return "".join(out)


# -- the step chain -------------------------------------------------------------------------------

NODE_W, NODE_H, COL_W, ROW_H, GUTTER = 112, 34, 132, 62, 40
_CHAIN_COL = {"z0": 0, "x_T": 0, "state": 0, "output": 0, "loss": 0, "step_noise": 1,
              "denoiser_in": 2, "denoiser_out": 3}


def chain(r: FlowReport) -> dict[str, Any]:
    """Positions of the step chain: rows (one per step; z0/x_T above, output/loss below), probes
    placed in their kind's column, edges classified for drawing."""
    probes = sorted(r.probes, key=lambda p: p.order)
    rows: list[tuple[str, list[ProbeStats]]] = []
    pre = [p for p in probes if p.step is None and p.kind in ("z0", "x_T")]
    if pre:
        rows.append(("start", pre))
    by_step: dict[int, list[ProbeStats]] = {}
    for p in probes:
        if p.step is not None:
            by_step.setdefault(p.step, []).append(p)
    rows += [(str(s), ps) for s, ps in sorted(by_step.items())]
    post = [p for p in probes if p.step is None and p.kind not in ("z0", "x_T")]
    if post:
        rows.append(("end", post))
    pos: dict[int, tuple[float, float]] = {}
    row_of: dict[int, int] = {}
    label_w = 86
    # the kinds' columns, only those present (a run without step noise has no empty column)
    base = sorted({_CHAIN_COL[p.kind] for p in probes if p.kind in _CHAIN_COL})
    remap = {c: i for i, c in enumerate(base)}
    extra = len(base)
    ncols = extra
    for ri, (_, ps) in enumerate(rows):
        used: set[int] = set()
        for p in ps:
            c = remap[_CHAIN_COL[p.kind]] if p.kind in _CHAIN_COL else extra
            while c in used:
                c = max(max(used) + 1, extra)
            used.add(c)
            ncols = max(ncols, c + 1)
            pos[p.order] = (label_w + c * COL_W, 16 + ri * ROW_H)
            row_of[p.order] = ri
    width = label_w + ncols * COL_W + GUTTER + 20
    height = 16 + len(rows) * ROW_H
    g = r.graph
    by_order = {p.order: p for p in probes}
    edges = []
    for a, b in (g.edges if g else []):
        if a not in pos or b not in pos:
            continue
        ra, rb = row_of[a], row_of[b]
        src = by_order[a]
        if src.step is None and src.kind in ("z0",) and rb - ra > 1:
            kind = "stub"  # z0 into a later step: a label, not an edge across the drawing
        elif rb - ra == 1 or (rb == ra and pos[b][0] > pos[a][0]):
            kind = "direct"
        else:
            kind = "gutter"
        edges.append((a, b, kind))
    return {"rows": rows, "pos": pos, "row_of": row_of, "width": width, "height": height,
            "edges": edges, "label_w": label_w, "ncols": ncols}


def _path(a: tuple[float, float], b: tuple[float, float], ra: int, rb: int, right: float,
          lane: int) -> str:
    """An edge of the chain from node a (row ra) to node b (row rb) that crosses no node: to the
    next row through the gap between the rows; within a row side to side (over the gap above
    the row when it skips a column); anything else down the gutter on the right."""
    (ax, ay), (bx, by) = a, b
    acx, bcx = ax + NODE_W / 2, bx + NODE_W / 2
    if rb == ra and bx > ax:
        if bx - ax <= COL_W + 1:  # neighbours: side to side
            return f"M{ax + NODE_W:.0f},{ay + NODE_H / 2:.0f} L{bx:.0f},{by + NODE_H / 2:.0f}"
        top, side = ay - 7, bx - 9
        return (f"M{acx:.0f},{ay:.0f} L{acx:.0f},{top:.0f} L{side:.0f},{top:.0f} "
                f"L{side:.0f},{by + NODE_H / 2:.0f} L{bx:.0f},{by + NODE_H / 2:.0f}")
    if rb == ra + 1:  # the next row: a curve through the gap
        y1, y2 = ay + NODE_H, by
        my = (y1 + y2) / 2
        return f"M{acx:.0f},{y1:.0f} C{acx:.0f},{my:.0f} {bcx:.0f},{my:.0f} {bcx:.0f},{y2:.0f}"
    gx = right + 10 + (lane % 4) * 7
    below, above = ay + NODE_H + 8, by - 9
    if rb <= ra:  # backwards or leftwards: along the gap below a, into b's bottom
        return (f"M{acx:.0f},{ay + NODE_H:.0f} L{acx:.0f},{below:.0f} L{bcx:.0f},{below:.0f} "
                f"L{bcx:.0f},{by + NODE_H:.0f}") if rb == ra else (
            f"M{acx:.0f},{ay + NODE_H:.0f} L{acx:.0f},{below:.0f} L{gx:.0f},{below:.0f} "
            f"L{gx:.0f},{above:.0f} L{bcx:.0f},{above:.0f} L{bcx:.0f},{by:.0f}")
    return (f"M{acx:.0f},{ay + NODE_H:.0f} L{acx:.0f},{below:.0f} L{gx:.0f},{below:.0f} "
            f"L{gx:.0f},{above:.0f} L{bcx + 6:.0f},{above:.0f} L{bcx + 6:.0f},{by:.0f}")


def chain_svg(r: FlowReport, ch: dict[str, Any] | None = None) -> str:
    """The step chain as an SVG string: nodes filled by log |g| (the heat map's colours)."""
    ch = ch or chain(r)
    scale = LogScale([p.norm for p in r.probes if p.status == "ok"])
    by_order = {p.order: p for p in r.probes}
    pos = ch["pos"]
    right = ch["label_w"] + ch["ncols"] * COL_W
    w, h = ch["width"], ch["height"]
    bp = break_point(r)
    out = [f'<svg class="chain" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" data-mode="{_esc(r.mode)}">', _DEFS,
           '<defs><marker id="gc-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="6" '
           'markerHeight="6" orient="auto"><path d="M0,0L8,4L0,8z" fill="#6e7781"/></marker>'
           '</defs><g class="viewport">']
    for ri, (name, ps) in enumerate(ch["rows"]):
        y = 16 + ri * ROW_H
        sig = next((p.sigma for p in ps if p.sigma is not None), None)
        label = (f"step {name}" if name not in ("start", "end") else name)
        step_attr = f' data-step="{_esc(name)}"' if name not in ("start", "end") else ""
        out.append(f'<g class="row"{step_attr}><rect class="rowbg" x="2" y="{y - 8}" '
                   f'width="{w - 4}" height="{ROW_H - 4}" rx="6"/>'
                   f'<text class="rowlabel" x="10" y="{y + 14}">{_esc(label)}</text>'
                   + (f'<text class="sigma" x="10" y="{y + 29}">sigma {sig:.4g}</text>'
                      if sig is not None else "") + "</g>")
    for lane, (a, b, kind) in enumerate(ch["edges"]):
        dst = by_order[b]
        cls = "e " + ("ok" if dst.status == "ok" else dst.status)
        if kind == "stub":
            bx, by = pos[b]
            out.append(f'<text class="stub" x="{bx - 4}" y="{by - 3}" text-anchor="end">'
                       f'from {_esc(by_order[a].name)}</text>')
            continue
        width = ""
        if dst.status == "ok":
            width = f' stroke-width="{0.8 + 2.4 * scale(dst.norm):.2f}"'
        ra, rb = ch["row_of"][a], ch["row_of"][b]
        out.append(f'<path class="{cls}" d="{_path(pos[a], pos[b], ra, rb, right, lane)}"'
                   f'{width} marker-end="url(#gc-arrow)"><title>{_esc(by_order[a].name)} -> '
                   f'{_esc(dst.name)}</title></path>')
    if bp is not None:
        a, b, why = bp
        if a.order in pos and b.order in pos:
            ra, rb = ch["row_of"][a.order], ch["row_of"][b.order]
            out.append(f'<path class="break-edge" d="{_path(pos[a.order], pos[b.order], ra, rb, right, 3)}">'
                       f'<title>the break: {_esc(a.name)} -> {_esc(b.name)}</title></path>')
    for p in r.probes:
        if p.order not in pos:
            continue
        x, y = pos[p.order]
        fill, stroke = _fill(p, scale)
        t = scale(p.norm) if p.status == "ok" else 0.0
        txt = "#ffffff" if p.status == "ok" and t < 0.6 else "#1f2328"
        brk = " at-break" if bp and p.order in (bp[0].order, bp[1].order) else ""
        step_attr = f' data-step="{_esc(p.step)}"' if p.step is not None else ""
        g = (f"|g| {fmt(p.norm)}" if p.status == "ok" else
             {"zero": "|g| = 0", "nonfinite": "non-finite", "unreached": "no gradient",
              "not_in_graph": "not in graph"}[p.status])
        name = p.name if len(p.name) <= 17 else p.name[:16] + "…"
        out.append(f'<g class="node {_esc(p.status)}{brk}" data-probe="{_esc(p.order)}"{step_attr} '
                   f'data-name="{_esc(p.name)}" data-kind="{_esc(p.kind)}">'
                   f'<title>{_esc(_tip(p))}</title>'
                   f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5" '
                   f'fill="{fill}" stroke="{stroke if stroke != "none" else "#57606a"}"/>'
                   f'<text x="{x + NODE_W / 2}" y="{y + 14}" fill="{txt}">{_esc(name)}</text>'
                   f'<text class="g" x="{x + NODE_W / 2}" y="{y + 27}" fill="{txt}">{g}</text>'
                   f'</g>')
    out.append("</g></svg>")
    return "".join(out)


# -- the op view of each step ---------------------------------------------------------------------

OP_W, OP_H, OP_GAP, LAYER_H = 124, 24, 18, 46
#: op views bigger than this are laid out with fewer ordering sweeps
_BIG = 2_000


def _short(op: str) -> str:
    return op[:-len("Backward0")] if op.endswith("Backward0") else (
        op[:-len("Backward1")] if op.endswith("Backward1") else op)


def _layout(n: int, edges: list[tuple[int, int]]) -> tuple[list[float], list[float],
                                                            list[list[tuple[float, float]]]]:
    """Layered layout of a DAG of ``n`` nodes (edges a -> b, forward): x, y of every node and
    the points of every edge (through its dummy nodes)."""
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for a, b in edges:
        succ[a].append(b)
        indeg[b] += 1
    # longest-path layers, in topological order (Kahn: no recursion)
    layer = [0] * n
    queue = [i for i in range(n) if indeg[i] == 0]
    seen = 0
    while queue:
        a = queue.pop()
        seen += 1
        for b in succ[a]:
            layer[b] = max(layer[b], layer[a] + 1)
            indeg[b] -= 1
            if indeg[b] == 0:
                queue.append(b)
    # dummy nodes for edges longer than one layer
    nodes_layer = list(layer)
    chains: list[list[int]] = []
    adj_up: dict[int, list[int]] = {}
    adj_down: dict[int, list[int]] = {}
    for a, b in edges:
        path = [a]
        for ly in range(layer[a] + 1, layer[b]):
            nodes_layer.append(ly)
            path.append(len(nodes_layer) - 1)
        path.append(b)
        chains.append(path)
        for u, v in zip(path, path[1:]):
            adj_down.setdefault(u, []).append(v)
            adj_up.setdefault(v, []).append(u)
    depth = max(nodes_layer, default=0) + 1
    layers: list[list[int]] = [[] for _ in range(depth)]
    for v, ly in enumerate(nodes_layer):
        layers[ly].append(v)
    order = {v: i for ly in layers for i, v in enumerate(ly)}
    sweeps = 4 if len(nodes_layer) <= _BIG else 1
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        rng = range(1, depth) if down else range(depth - 2, -1, -1)
        nb = adj_up if down else adj_down
        for ly in rng:
            def bary(v: int) -> float:
                ns = nb.get(v)
                return sum(order[u] for u in ns) / len(ns) if ns else order[v]
            layers[ly].sort(key=bary)
            for i, v in enumerate(layers[ly]):
                order[v] = i
    width = max(len(ly) for ly in layers) if layers else 1
    xs = [0.0] * len(nodes_layer)
    ys = [0.0] * len(nodes_layer)
    for ly, vs in enumerate(layers):
        off = (width - len(vs)) / 2  # centre each layer
        for i, v in enumerate(vs):
            xs[v] = 10 + (off + i) * (OP_W + OP_GAP)
            ys[v] = 10 + ly * LAYER_H
    pts = [[(xs[v] + OP_W / 2, ys[v] + OP_H / 2) for v in path] for path in chains]
    return xs[:n], ys[:n], pts


def _stops(grads: list[float | None], a: int, b: int) -> bool:
    """Does the gradient stop on edge a -> b (it reaches b's output, not a's)?"""
    gb, ga = grads[b], grads[a]
    return gb is not None and gb > 0 and (ga is None or ga == 0)


def _dead_below(grads: list[float | None], below: dict[int, list[int]], a: int,
                unseen: set[int]) -> bool:
    """For an op ``a`` whose |g| was not recorded: did the nearest recorded ops it was made from
    (there is at least one) all get no gradient (None or 0)? Then the stop is on a's edge."""
    stack, seen, found = list(below.get(a, ())), set(), False
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if i in unseen:
            stack.extend(below.get(i, ()))
            continue
        found = True
        if grads[i] is not None and grads[i] != 0:
            return False
    return found


def op_views(r: FlowReport, strings: dict[str, int]) -> dict[str, Any]:
    """Per sampler step (key: the step as a string; ``"start"``/``"end"`` for probes outside the
    steps), the ops of its regions and the probes around them, laid out. ``strings`` interns op
    names and source lines (the page keeps one table of them)."""
    g = r.graph
    if g is None:
        return {}
    by_order = {p.order: p for p in r.probes}
    scale = LogScale([v for reg in g.regions for v in (reg.grads or [])] +
                     [p.norm for p in r.probes if p.status == "ok"])
    groups: dict[str, list[OpRegion]] = {}
    for reg in g.regions:
        p = by_order.get(reg.probe)
        if p is None:
            continue
        key = str(p.step) if p.step is not None else ("start" if p.kind in ("z0", "x_T")
                                                      else "end")
        groups.setdefault(key, []).append(reg)
    bp = break_point(r)
    loc = r.locator.primary if r.locator and r.locator.primary else None

    def intern(s: str | None) -> int:
        if s is None:
            return -1
        if s not in strings:
            strings[s] = len(strings)
        return strings[s]

    views: dict[str, Any] = {}
    for key, regs in groups.items():
        # nodes: the probes (those of the step, and those outside it that feed it), then ops
        nodes: list[dict[str, Any]] = []
        probe_node: dict[int, int] = {}

        def pnode(order: int, outside: bool) -> int:
            if order not in probe_node:
                probe_node[order] = len(nodes)
                nodes.append({"p": order, "out": outside})
            return probe_node[order]

        edges: list[tuple[int, int]] = []
        stop: set[tuple[int, int]] = set()
        for reg in sorted(regs, key=lambda x: x.probe):
            base = len(nodes)
            grads = reg.grads or [None] * len(reg.ops)
            where = reg.where or [None] * len(reg.ops)
            asked = set(reg.not_asked)
            # an op the op detail did not see made (one inside a composite op, such as the
            # weight's transpose inside linear) had no hook: its |g| is not recorded
            unseen = {i for i, w in enumerate(where) if w is None} if reg.where else set()
            for i, op in enumerate(reg.ops):
                nodes.append({"op": intern(_short(op)), "g": grads[i], "w": intern(where[i]),
                              "hit": loc is not None and loc.location is not None
                              and where[i] == loc.location, "na": i in asked,
                              "nr": i in unseen})
            below: dict[int, list[int]] = {}
            for a, b in reg.edges:
                below.setdefault(b, []).append(a)
            for a, b in reg.edges:
                edges.append((base + a, base + b))
                # an op that reads weights only gets no gradient when theirs is not asked for:
                # not a stop; nor is an unseen op, unless the ops it was made from, seen, got
                # none either
                if reg.grads and a not in asked and _stops(reg.grads, a, b) and (
                        a not in unseen or _dead_below(reg.grads, below, a, unseen)):
                    stop.add((base + a, base + b))
            for src, i in reg.sources:
                if src in by_order:
                    sp = by_order[src]
                    outside = (str(sp.step) if sp.step is not None else None) != key
                    edges.append((pnode(src, outside), base + i))
                    # the gradient reaches the op that reads the probed value, not the value
                    # (a round() right after a probe): the stop is on this edge
                    gi = grads[i]
                    if reg.grads and sp.status in ("zero", "unreached") and gi is not None \
                            and gi > 0 and math.isfinite(gi):
                        stop.add(edges[-1])
            edges.append((base, pnode(reg.probe, False)))
        # the break: a probe-to-probe cut inside this step is drawn as a red dashed edge
        cut = None
        if bp is not None and (bp[0].order in probe_node or bp[1].order in probe_node):
            a_n = pnode(bp[0].order, str(bp[0].step) != key)
            b_n = pnode(bp[1].order, str(bp[1].step) != key)
            cut = [a_n, b_n]
            edges.append((a_n, b_n))
        uniq = list(dict.fromkeys(edges))  # an edge met twice is drawn once
        xs, ys, pts = _layout(len(nodes), uniq)
        out_nodes = []
        for i, nd in enumerate(nodes):
            x, y = round(xs[i]), round(ys[i])
            if "p" in nd:
                p = by_order[nd["p"]]
                t = scale(p.norm) if p.status == "ok" else None
                out_nodes.append([x, y, -2, nd["p"], p.norm if p.status == "ok" else None,
                                  p.status, round(t, 3) if t is not None else None,
                                  1 if nd["out"] else 0])
            else:
                gv = nd["g"]
                t = scale(gv) if gv is not None and gv > 0 and math.isfinite(gv) else None
                st = ("ok" if t is not None else "zero" if gv == 0 else
                      "nonfinite" if gv is not None else
                      "not_asked" if nd.get("na") else
                      "unrecorded" if nd.get("nr") else "unreached")
                out_nodes.append([x, y, nd["op"], nd["w"], gv, st,
                                  round(t, 3) if t is not None else None, 1 if nd["hit"] else 0])
        out_edges = []
        for (a, b), path in zip(uniq, pts):
            flag = 2 if cut == [a, b] else (1 if (a, b) in stop else 0)
            out_edges.append([a, b, flag, [round(c) for xy in path for c in xy]])
        w = max((n[0] for n in out_nodes), default=0) + OP_W + 20
        h = max((n[1] for n in out_nodes), default=0) + OP_H + 20
        views[key] = {"n": out_nodes, "e": out_edges, "w": w, "h": h}
    return views


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


def ratio_svg(md: Any, width: int = 1180) -> str:
    """One mode of a diff as a strip: step x probe kind, colour = log10(|g| in B / |g| in A);
    a black cross where a probe's status changed (gradient lost or gained)."""
    probes = [p for p in md.probes if p.step is not None]
    steps = sorted({p.step for p in probes})
    kinds = [k for k in KIND_ORDER if any(_row_kind(p.kind) == k for p in probes)] + sorted(
        {_row_kind(p.kind) for p in probes} - set(KIND_ORDER))
    if not steps:
        return ""
    left, top, row_h = 112, 8, 20
    cell_w = max(3.0, min(48.0, (width - left - 40) / len(steps)))
    col = {s: i for i, s in enumerate(steps)}
    row = {k: i for i, k in enumerate(kinds)}
    h = top + row_h * len(kinds) + 60
    w = int(max(left + cell_w * len(steps) + 20, 640))
    out = [f'<svg class="ratio" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}"><g style="font:11px Helvetica,Arial,sans-serif">']
    for k, i in row.items():
        out.append(f'<text x="{left - 6}" y="{top + i * row_h + 14}" text-anchor="end">'
                   f'{_esc(KIND_WORDS.get(k, k))}</text>')
    cells: dict[tuple[int, str], list[Any]] = {}
    for p in probes:
        cells.setdefault((p.step, _row_kind(p.kind)), []).append(p)
    for (s, k), ps in cells.items():
        x, y = left + col[s] * cell_w, top + row[k] * row_h
        ch = row_h / len(ps)
        for j, p in enumerate(ps):
            r = p.ratio
            changed = p.status_a != p.status_b
            fill = "#ffffff" if r is None else _diverging(math.log10(r))
            tip = (f"{p.name} (step {p.step}): {fmt(p.a)} -> {fmt(p.b)}"
                   + (f", x{r:.3g}" if r is not None else "")
                   + (f", {p.status_a} -> {p.status_b}" if changed else ""))
            yy = y + j * ch
            out.append(f'<rect x="{x:.2f}" y="{yy:.2f}" width="{max(cell_w - 0.6, 1):.2f}" '
                       f'height="{max(ch - 0.6, 1):.2f}" fill="{fill}" stroke="#d0d7de" '
                       f'stroke-width="0.3"><title>{_esc(tip)}</title></rect>')
            if changed:
                out.append(f'<path d="M{x + 1:.1f},{yy + 1:.1f}L{x + cell_w - 1.6:.1f},'
                           f'{yy + ch - 1.6:.1f}M{x + cell_w - 1.6:.1f},{yy + 1:.1f}L{x + 1:.1f},'
                           f'{yy + ch - 1.6:.1f}" stroke="#000" stroke-width="1.4"/>')
    gy = top + row_h * len(kinds)
    every = max(1, math.ceil(32 / cell_w))
    for i, s in enumerate(steps):
        if i % every == 0:
            out.append(f'<text x="{left + (i + 0.5) * cell_w:.1f}" y="{gy + 13}" '
                       f'text-anchor="middle">{_esc(s)}</text>')
    ly = gy + 26
    for i in range(40):
        out.append(f'<rect x="{left + i * 5}" y="{ly}" width="5.3" height="10" '
                   f'fill="{_diverging(-2 + 4 * i / 39)}"/>')
    for v, lab in ((-2, "1/100"), (-1, "1/10"), (0, "1"), (1, "10"), (2, "100")):
        out.append(f'<text x="{left + (v + 2) / 4 * 200:.1f}" y="{ly + 22}" '
                   f'text-anchor="middle">{lab}</text>')
    out.append(f'<text x="{left - 6}" y="{ly + 9}" text-anchor="end">B/A</text>'
               f'<path d="M{left + 230},{ly}l10,10m0,-10l-10,10" stroke="#000" '
               f'stroke-width="1.4"/><text x="{left + 246}" y="{ly + 9}">status changed '
               f'(gradient lost or gained)</text></g></svg>')
    return "".join(out)
