"""The op view of each sampler step: the ops of its regions laid out on their own (layered, as a
Sugiyama layout: :func:`.layout.layered`), each op's |g| and source line, and the edges where the
gradient stops. :func:`op_views` is the laid-out data (tested as geometry), :func:`op_view` the
drawing the page holds per step in a ``<template>`` (shown when the step is opened).
"""
from __future__ import annotations

import math
from typing import Any

from ..checks import break_point
from ..records import FlowReport, OpRegion, ProbeStats
from ..text import fmt
from .layout import OP_H, OP_W, layered, short_op
from .shapes import Node, el
from .views import MARKS, LogScale, arrow, viridis


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
    steps), the ops of its regions and the probes around them, laid out: nodes ``[x, y, op,
    where, |g|, status, colour t, hit]`` (a probe: op ``-2``, where its order, hit: it lies
    outside the step) and edges ``[a, b, flag, points]`` (flag 1: the gradient stops there; 2:
    the break). ``strings`` interns op names and source lines."""
    g = r.graph
    if g is None:
        return {}
    by_order = {p.order: p for p in r.probes}
    scale = LogScale([v for reg in g.regions for v in (reg.grads or [])] +
                     [p.norm for p in r.probes if p.status == "ok"])
    groups: dict[str, list[OpRegion]] = {}
    for reg in g.regions:
        p = by_order.get(reg.probe)
        if p is not None:
            groups.setdefault(_step_key(p), []).append(reg)
    bp = break_point(r)
    loc = r.locator.primary if r.locator and r.locator.primary else None
    hit_at = loc.location if loc is not None else None

    def intern(s: str | None) -> int:
        if s is None:
            return -1
        return strings.setdefault(s, len(strings))

    views = {}
    for key, regs in groups.items():
        col = _Collected(key, by_order, intern, hit_at)
        for reg in sorted(regs, key=lambda x: x.probe):
            col.region(reg)
        col.the_break(bp)
        views[key] = _laid_out(col, by_order, scale)
    return views


def _step_key(p: ProbeStats) -> str:
    return str(p.step) if p.step is not None else ("start" if p.kind in ("z0", "x_T") else "end")


class _Collected:
    """One step's nodes (the probes of the step and those outside it that feed it, then the ops)
    and edges, with the edges where the gradient stops and the break."""

    def __init__(self, key: str, by_order: dict[int, ProbeStats], intern: Any,
                 hit_at: str | None) -> None:
        self.key, self.by_order, self.intern, self.hit_at = key, by_order, intern, hit_at
        self.nodes: list[dict[str, Any]] = []
        self.probe_node: dict[int, int] = {}
        self.edges: list[tuple[int, int]] = []
        self.stop: set[tuple[int, int]] = set()
        self.cut: list[int] | None = None

    def pnode(self, order: int, outside: bool) -> int:
        if order not in self.probe_node:
            self.probe_node[order] = len(self.nodes)
            self.nodes.append({"p": order, "out": outside})
        return self.probe_node[order]

    def region(self, reg: OpRegion) -> None:
        base = len(self.nodes)
        grads = reg.grads or [None] * len(reg.ops)
        where = reg.where or [None] * len(reg.ops)
        asked = set(reg.not_asked)
        # an op the op detail did not see made (one inside a composite op, such as the
        # weight's transpose inside linear) had no hook: its |g| is not recorded
        unseen = {i for i, w in enumerate(where) if w is None} if reg.where else set()
        for i, op in enumerate(reg.ops):
            self.nodes.append({"op": self.intern(short_op(op)), "g": grads[i],
                               "w": self.intern(where[i]),
                               "hit": self.hit_at is not None and where[i] == self.hit_at,
                               "na": i in asked, "nr": i in unseen, "nd": reg.grads is None})
        below: dict[int, list[int]] = {}
        for a, b in reg.edges:
            below.setdefault(b, []).append(a)
        for a, b in reg.edges:
            self.edges.append((base + a, base + b))
            # an op that reads weights only gets no gradient when theirs is not asked for: not
            # a stop; nor is an unseen op, unless the ops it was made from, seen, got none either
            if reg.grads and a not in asked and _stops(reg.grads, a, b) and (
                    a not in unseen or _dead_below(reg.grads, below, a, unseen)):
                self.stop.add((base + a, base + b))
        for src, i in reg.sources:
            if src in self.by_order:
                sp = self.by_order[src]
                outside = (str(sp.step) if sp.step is not None else None) != self.key
                self.edges.append((self.pnode(src, outside), base + i))
                # the gradient reaches the op that reads the probed value, not the value (a
                # round() right after a probe): the stop is on this edge
                gi = grads[i]
                if reg.grads and sp.status in ("zero", "unreached") and gi is not None \
                        and gi > 0 and math.isfinite(gi):
                    self.stop.add(self.edges[-1])
        self.edges.append((base, self.pnode(reg.probe, False)))

    def the_break(self, bp: Any) -> None:
        """A probe-to-probe cut inside this step: drawn as a red dashed edge."""
        if bp is not None and (bp[0].order in self.probe_node or bp[1].order in self.probe_node):
            a_n = self.pnode(bp[0].order, str(bp[0].step) != self.key)
            b_n = self.pnode(bp[1].order, str(bp[1].step) != self.key)
            self.cut = [a_n, b_n]
            self.edges.append((a_n, b_n))


def _laid_out(col: _Collected, by_order: dict[int, ProbeStats], scale: LogScale) -> dict[str, Any]:
    uniq = list(dict.fromkeys(col.edges))  # an edge met twice is drawn once
    xs, ys, pts = layered(len(col.nodes), uniq)
    out_nodes = []
    for i, nd in enumerate(col.nodes):
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
                  "no_detail" if nd.get("nd") else  # not measured: never drawn as a break
                  "unrecorded" if nd.get("nr") else "unreached")
            out_nodes.append([x, y, nd["op"], nd["w"], gv, st,
                              round(t, 3) if t is not None else None, 1 if nd["hit"] else 0])
    out_edges = []
    for (a, b), path in zip(uniq, pts):
        flag = 2 if col.cut == [a, b] else (1 if (a, b) in col.stop else 0)
        out_edges.append([a, b, flag, [round(c) for xy in path for c in xy]])
    w = max((n[0] for n in out_nodes), default=0) + OP_W + 20
    h = max((n[1] for n in out_nodes), default=0) + OP_H + 20
    return {"n": out_nodes, "e": out_edges, "w": w, "h": h}


# -- drawn ----------------------------------------------------------------------------------------

#: fills and words of an op's status (beyond the probes' marks)
_OP_FILL = {**{k: pattern or fill for k, (fill, pattern, _) in MARKS.items()},
            "not_asked": "#eef1f4", "unrecorded": "#f6f8fa", "no_detail": "#f6f8fa"}
OP_WORDS = {**{k: v[2] for k, v in MARKS.items()},
            "not_asked": "reads weights only: their gradient was not asked for (grad_weights), "
                         "so none is computed here; not a break",
            "unrecorded": "|g| not recorded: made inside a composite op (e.g. a weight's "
                          "transpose inside linear), where the op detail puts no hook",
            "no_detail": "|g| not recorded: the op detail was not kept for this run (see "
                         "above); not a break"}


def op_view(key: str, v: dict[str, Any], strings: list[str], probes: dict[int, ProbeStats],
            detail: bool, detail_skipped: str | None) -> Node:
    """One step's op view as a ``<template>`` the page shows when the step is opened: its
    heading (what the view holds, where the gradient stops) and its drawing."""
    n_ops = sum(1 for n in v["n"] if n[2] != -2)
    stops = sum(1 for e in v["e"] if e[2] == 1)
    cut = any(e[2] == 2 for e in v["e"])
    not_asked = sum(1 for n in v["n"] if n[2] != -2 and n[5] == "not_asked")
    label = key if key in ("start", "end") else f"step {key}"
    parts = [el("strong", text=label), el("span", text=f": {n_ops} ops between "
                                                       f"{len(v['n']) - n_ops} probes")]
    for on, text, cls in ((cut, "the graph ends here (red dashed)", "bad"),
                          (stops, f"the gradient stops on {stops} edge(s) (red)", "bad"),
                          (not_asked, f"{not_asked} read weights only (pale: their gradient "
                                      f"was not asked for)", "muted"),
                          (not detail, "|g| and source lines of ops not recorded ("
                                       f"{detail_skipped or ''})", "muted")):
        if on:
            parts += [el("span", text="; "), el("span", text=text, class_=cls)]
    parts.append(el("div", text="hover an op for its |g| and source line", class_="opinfo muted"))
    bad = next((e for e in v["e"] if e[2] == 2), None) or next(
        (e for e in v["e"] if e[2] == 1), None)
    focus = bad[3][len(bad[3]) // 4 * 2:][:2] if bad else None
    svg = el("svg", el("defs", arrow("gc-oparrow", 5)),
             *[_op_edge(e, v["n"]) for e in v["e"]],
             *[_op_node(i, n, strings, probes, detail) for i, n in enumerate(v["n"])],
             width=v["w"], height=v["h"], class_="ops",
             data_fx=focus[0] if focus else None, data_fy=focus[1] if focus else None)
    return el("template", el("div", *parts, class_="ophead-text"), svg, data_step=key)


def _op_edge(e: list[Any], nodes: list[list[Any]]) -> Node:
    a, b, flag, pts = e
    d = []
    for i in range(0, len(pts), 2):
        x, y = pts[i], pts[i + 1]
        y += OP_H // 2 if i == 0 else 0
        y -= OP_H // 2 if i == len(pts) - 2 else 0
        d.append(("L" if i else "M") + f"{x},{y}")
    to = nodes[b]
    # no gradient passes along an edge out of an op whose gradient was not asked for
    cls = "cut" if flag == 2 else "stops" if flag == 1 else (
        "ok" if to[5] == "ok" and nodes[a][5] != "not_asked" else "none")
    style = f"stroke:{viridis(0.15 + 0.7 * to[6])};stroke-width:{0.8 + 2 * to[6]:.2f}" \
        if cls == "ok" and to[6] is not None else None
    tip = {"cut": "the break: the autograd graph ends here",
           "stops": "the gradient stops on this edge: it reaches the op below, not the one "
                    "above"}.get(cls)
    return el("path", el("title", text=tip) if tip else None, class_=f"oe {cls}", d=" ".join(d),
              marker_end="url(#gc-oparrow)", style=style)


def _op_node(i: int, n: list[Any], strings: list[str], probes: dict[int, ProbeStats],
             detail: bool) -> Node:
    x, y, op, where, g, st, t, hit = n
    fill = viridis(t) if st == "ok" and t is not None else _OP_FILL.get(st, "#eee")
    dark = st == "ok" and t is not None and t < 0.6
    said = f"|g| {fmt(g)}" if st == "ok" else OP_WORDS.get(st, st)
    if op == -2:
        name = probes[where].name if where in probes else f"#{where}"
        label, tip, q = ("from " if hit else "") + name, f"probe {name} · {said}", name
    else:
        line = strings[where] if where >= 0 else "(line not recorded)"
        if g is None and not detail and st != "ok":
            said = "|g| not recorded"
        label, tip = strings[op], f"{strings[op]} · {said} · {line}"
        q = strings[op] + " " + (strings[where] if where >= 0 else "")
    if len(label) > 19:
        label = label[:18] + "…"
    kind = "probe" if op == -2 else "op"
    return el("g", el("title", text=tip),
              el("rect", x=x, y=y, width=OP_W, height=OP_H, rx=12 if op == -2 else 3, fill=fill),
              el("text", text=label, x=x + OP_W // 2, y=y + 16, fill="#fff" if dark else "#1f2328"),
              class_=f"on {kind} {st}" + (" hit" if hit and op != -2 else ""), data_i=i,
              data_q=q.lower(), data_op=strings[op] if op != -2 else None)
