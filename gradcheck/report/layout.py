"""Geometry of the page's drawings, from a record alone: where the step chain puts each probe
and how its edges run without crossing a node (:func:`chain`, :func:`chain_path`), and the layered
layout of a step's ops (:func:`layered`). Numbers only; :mod:`.views` and :mod:`.opviews` turn
them into drawings.
"""
from __future__ import annotations

from typing import Any

from ..records import FlowReport, ProbeStats

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


def chain_path(a: tuple[float, float], b: tuple[float, float], ra: int, rb: int, right: float,
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


# -- the op view of each step ---------------------------------------------------------------------

OP_W, OP_H, OP_GAP, LAYER_H = 124, 24, 18, 46
#: op views bigger than this are laid out with fewer ordering sweeps
_BIG = 2_000


def short_op(op: str) -> str:
    return op[:-len("Backward0")] if op.endswith("Backward0") else (
        op[:-len("Backward1")] if op.endswith("Backward1") else op)


def layered(n: int, edges: list[tuple[int, int]]) -> tuple[list[float], list[float],
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
