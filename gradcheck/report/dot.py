"""gradcheck's one DOT writer (:class:`Digraph`), the graphs written with it (the step graph: the
recorded probe graph, one cluster per sampler step; the op-level autograd graph), and their layout
by Graphviz.

Built from records alone (no torch), without recursion (any graph size). Nodes are the probes, filled
by gradient magnitude (log scale, pale to dark blue), grey when no gradient arrived, dotted when the
tensor was not in the autograd graph, orange when exactly zero, red when non-finite. Edges point
forward (input -> output); their colour and width follow the gradient that flows back along them.
The break, when there is one, is a bold red dashed edge.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..checks import break_point
from ..errors import GradcheckError
from ..records import FlowReport, OpGraph, ProbeStats
from ..sanitize import clean
from ..text import BREAK_POINT_WORDS, node_label, steps_of

#: Seconds allowed for one Graphviz layout before it is abandoned.
LAYOUT_TIMEOUT_S = 30.0
INSTALL_HINT = ("install Graphviz to draw graphs (Debian/Ubuntu: apt-get install graphviz; "
                "macOS: brew install graphviz; conda: conda install graphviz)")

_SHAPES = {"z0": "doublecircle", "x_T": "ellipse", "state": "ellipse", "step_noise": "diamond",
           "denoiser_in": "box", "denoiser_out": "box", "output": "box", "loss": "octagon"}
_LOW, _HIGH = (222, 235, 247), (8, 48, 107)  # pale to dark blue


class GraphvizMissing(GradcheckError):
    """No ``dot`` binary on PATH."""


class LayoutFailed(GradcheckError):
    """Graphviz failed or ran past its time limit."""


def q(text: str) -> str:
    """A DOT double-quoted string: backslashes, quotes and line breaks escaped, so nothing in
    ``text`` can end the string (and add an attribute such as ``URL``)."""
    text = clean(str(text).replace("\r", "\n"))  # control characters as \\xNN text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def ident(name: str) -> str:
    """A DOT node or graph id: a plain identifier as it is, anything else quoted."""
    name = str(name)
    return name if _ID.fullmatch(name) else q(name)


def _shade(t: float) -> str:
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(_LOW, _HIGH))
    return f"#{r:02x}{g:02x}{b:02x}"


class _Scale:
    """Maps gradient norms to [0, 1] on a log scale over the reached probes of one report."""

    def __init__(self, probes: list[ProbeStats]) -> None:
        logs = [math.log10(p.norm) for p in probes
                if p.reached and p.norm and math.isfinite(p.norm) and p.norm > 0]
        self.lo, self.hi = (min(logs), max(logs)) if logs else (0.0, 1.0)

    def __call__(self, norm: float) -> float:
        if self.hi <= self.lo:
            return 0.5
        return min(1.0, max(0.0, (math.log10(norm) - self.lo) / (self.hi - self.lo)))


def _node_attrs(p: ProbeStats, scale: _Scale) -> dict[str, str]:
    st = p.status
    label = node_label(p)
    a = {"label": label, "shape": _SHAPES.get(p.kind, "box"), "tooltip": f"{p.kind}: {label}"}
    if st == "ok":
        t = scale(p.norm)
        a.update(style="filled", fillcolor=_shade(t), fontcolor="white" if t > 0.55 else "black")
    elif st == "zero":
        a.update(style="filled", fillcolor="#fdd49e", color="#d94801")
    elif st == "nonfinite":
        a.update(style="filled", fillcolor="#fb6a4a", color="#a50f15")
    elif st == "unreached":
        a.update(style="filled,dashed", fillcolor="#eeeeee", color="#999999",
                 fontcolor="#666666")
    else:
        a.update(style="dotted", color="#aaaaaa", fontcolor="#888888")
    return a


def _stub_attrs(p: ProbeStats) -> dict[str, str]:
    return {"label": f"from {p.name}", "shape": "plaintext", "fontsize": "9",
            "fontcolor": "#555555", "height": "0.2", "tooltip": f"computed from {p.name}"}


def _attrs(a: dict[str, str]) -> str:
    return ", ".join(f"{ident(k)}={q(v)}" for k, v in a.items())


class Digraph:
    """A DOT ``digraph`` written line by line: graph/node/edge defaults, nodes, edges and
    clusters (``with g.cluster(name, label=...)``; nestable). Attribute values are quoted with
    :func:`q`. Nothing recurses, so any graph size writes.

    Args:
        name: the graph's name.
        graph, node, edge: default attributes (``graph [...]``, ``node [...]``, ``edge [...]``).
    """

    def __init__(self, name: str, *, graph: dict[str, str] | None = None,
                 node: dict[str, str] | None = None, edge: dict[str, str] | None = None) -> None:
        self.lines = [f"digraph {q(name)} {{"]
        self.depth = 1
        for kind, attrs in (("graph", graph), ("node", node), ("edge", edge)):
            if attrs:
                self._line(f"{kind} [{_attrs(attrs)}];")

    def _line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def node(self, name: str, **attrs: str) -> None:
        name = ident(name)
        self._line(f"{name} [{_attrs(attrs)}];" if attrs else f"{name};")

    def edge(self, a: str, b: str, **attrs: str) -> None:
        a, b = ident(a), ident(b)
        self._line(f"{a} -> {b} [{_attrs(attrs)}];" if attrs else f"{a} -> {b};")

    def cluster(self, name: str, **attrs: str) -> _Cluster:
        return _Cluster(self, name, attrs)

    def source(self) -> str:
        return "\n".join(self.lines + ["}"]) + "\n"


class _Cluster:
    def __init__(self, g: Digraph, name: str, attrs: dict[str, str]) -> None:
        self.g, self.name, self.attrs = g, name, attrs

    def __enter__(self) -> Digraph:
        self.g._line(f"subgraph {ident('cluster_' + self.name)} {{")
        self.g.depth += 1
        if self.attrs:
            self.g._line(f"graph [{_attrs(self.attrs)}];")
        return self.g

    def __exit__(self, *exc: object) -> None:
        self.g.depth -= 1
        self.g._line("}")


def step_graph_dot(r: FlowReport) -> str:
    """DOT source of the step graph of one mode."""
    probes = {p.order: p for p in r.probes}
    scale = _Scale(r.probes)
    g = r.graph
    edges = [tuple(e) for e in g.edges] if g else []
    dg = Digraph(f"steps_{r.mode}", graph={
        "rankdir": "TB", "newrank": "true", "nodesep": "0.25", "ranksep": "0.3",
        "fontname": "Helvetica", "fontsize": "12",
        "label": f"{r.mode}: gradient through the sampler, step by step", "labelloc": "t"},
        node={"fontname": "Helvetica", "fontsize": "10", "margin": "0.06,0.03", "height": "0.3"},
        edge={"arrowsize": "0.6", "fontname": "Helvetica"})
    # an edge from a step-less probe (z0) into a later step would span the whole drawing and make
    # layout slow and unreadable: draw it as a local stub node inside the destination's cluster
    stubs: dict[tuple[int, int], str] = {}
    for a, b in edges:
        src, dst = probes.get(a), probes.get(b)
        if src is not None and dst is not None and src.step is None and (dst.step or 0) > 0:
            stubs[(a, b)] = f"s{a}_{b}"

    def nodes(ps: list[ProbeStats], step: int | None) -> None:
        for p in ps:
            dg.node(f"p{p.order}", **_node_attrs(p, scale))
        for (a, b), sid in stubs.items():
            if probes[b].step == step:
                dg.node(sid, **_stub_attrs(probes[a]))

    stepless = [p for p in sorted(r.probes, key=lambda p: p.order) if p.step is None]
    for step, ps in steps_of(r).items():
        sig = next((p.sigma for p in ps if p.sigma is not None), None)
        label = f"step {step}" + (f"  sigma {sig:.4g}" if sig is not None else "")
        with dg.cluster(str(step), label=label, style="rounded", color="#bbbbbb", fontsize="10"):
            nodes(ps, step)
    nodes(stepless, None)
    for a, b in edges:
        src, dst = probes.get(a), probes.get(b)
        if src is None or dst is None:
            continue
        ea: dict[str, str] = {}
        if dst.status == "ok":
            t = scale(dst.norm)
            ea.update(color=_shade(0.25 + 0.75 * t), penwidth=f"{0.8 + 2.7 * t:.2f}")
        elif dst.status == "zero":
            ea.update(color="#d94801")
        elif dst.status == "nonfinite":
            ea.update(color="#a50f15", penwidth="2")
        else:
            ea.update(color="#bbbbbb", style="dashed")
        ops = sum((g.region_ops.get(str(b)) or {}).values()) if g else 0
        if src.kind == "denoiser_in" and dst.kind == "denoiser_out":
            ea["label"] = f"D ({ops} ops)"
            ea["fontsize"] = "8"
        dg.edge(stubs.get((a, b), f"p{a}"), f"p{b}", **ea)
    # probes with no incoming edge (not in the graph, e.g. after a detach) would all float to the
    # top: chain each to its predecessor in forward order with an invisible edge
    has_in = {b for _, b in edges}
    ordered = sorted(r.probes, key=lambda p: p.order)
    for prev, p in zip(ordered, ordered[1:]):
        if p.order not in has_in and p.kind != "z0":
            dg.edge(f"p{prev.order}", f"p{p.order}", style="invis")
    bp = break_point(r)
    if bp is not None:
        a, b, kind = bp
        dg.edge(f"p{a.order}", f"p{b.order}", color="#cb181d", style="dashed", penwidth="3",
                label="BREAK: " + BREAK_POINT_WORDS[kind], fontcolor="#cb181d", fontsize="10")
    return dg.source()


def op_graph_dot(ops: OpGraph, name: str = "autograd") -> str:
    """DOT source of an op-level autograd graph (:class:`~gradcheck.records.OpGraph`)."""
    dg = Digraph(name, node={"shape": "box", "style": "filled", "fillcolor": "#eeeeee",
                             "fontname": "Helvetica", "fontsize": "10"})
    for i, label in enumerate(ops.labels):
        if label.startswith("leaf"):
            dg.node(f"n{i}", label=label, fillcolor="#deebf7")
        else:
            dg.node(f"n{i}", label=label)
    for a, b in ops.edges:
        dg.edge(f"n{a}", f"n{b}")
    return dg.source()


def find_dot() -> str | None:
    """The Graphviz ``dot`` binary on PATH, or None."""
    return shutil.which("dot")


def layout(dot_src: str, formats: tuple[str, ...] = ("svg",), *,
           timeout: float = LAYOUT_TIMEOUT_S) -> dict[str, bytes]:
    """Lay out ``dot_src`` once and render it in every format (one ``dot`` process).

    Raises:
        GraphvizMissing: no ``dot`` on PATH.
        LayoutFailed: dot exited non-zero or ran past ``timeout`` seconds.
    """
    exe = find_dot()
    if exe is None:
        raise GraphvizMissing(f"the Graphviz 'dot' binary is not on PATH: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="gradcheck-dot-") as tmp:
        args = [exe]
        for f in formats:
            args += [f"-T{f}", f"-o{os.path.join(tmp, 'out.' + f)}"]
        try:
            res = subprocess.run(args, input=dot_src.encode(), capture_output=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LayoutFailed(f"Graphviz layout took longer than {timeout:g} s") from None
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            raise LayoutFailed(f"dot exited {res.returncode}: {err[-1] if err else ''}")
        return {f: Path(tmp, "out." + f).read_bytes() for f in formats}
