"""The locator's backward analysis: where a gradient becomes exactly zero or non-finite.

One backward pass with a hook on every node that leads to z0: the first node (in execution order
from the loss) whose incoming gradient is non-zero (finite) but whose gradient towards z0 is all
zero (non-finite). Run only when a probe's gradient was zero or non-finite.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import graph
from ..probes import Trace
from ..records import BreakEvent

#: how many zeroing nodes one pass names (a structural zero of the schedule may come first)
MAX_ZEROS = 8


def backward_analysis(loss: torch.Tensor, z: torch.Tensor, info: dict, want: set[str],
                       tr: Trace, cotangent: torch.Tensor | None = None) -> list[BreakEvent]:
    """Node hooks over one backward pass: the first node (in execution order from the loss) on a
    path to z0 whose incoming gradient is non-zero but whose gradient towards z0 is exactly zero
    (``zero``), or finite but whose gradient towards z0 is not (``nonfinite``). With a
    ``cotangent``, ``loss`` is the output and the pass starts from it along that direction (a
    stationary loss sends nothing back; a random output direction probes the path itself)."""
    nodes = list(graph.iter_nodes([loss.grad_fn]))
    # reach[n]: the node leads to z0's AccumulateGrad (iterative post-order)
    reach: dict[int, bool] = {}
    for n in reversed(_topo(nodes)):
        reach[id(n)] = getattr(n, "variable", None) is z or any(
            reach.get(id(c), False) for c, _ in n.next_functions if c is not None)
    found: dict[str, tuple[int, Any]] = {}
    zeros: list[tuple[int, Any]] = []  # every node that zeroes the gradient, first first
    counter = [0]
    # a saturated value saturates everything after it: the gradient is already zero below the
    # last saturated op, so the ones before it (the root, in forward order) see none. Each
    # further pass revives the gradient where the previous one found it zeroed (seeded noise
    # in its place), until no new zeroing op is met: the last one found is the root
    revive: set[int] = set()
    passes: dict[int, int] = {}  # node -> the pass that found it
    for k in range(MAX_ZEROS):
        met = len(zeros)
        _one_pass(loss, nodes, reach, want, cotangent, z, zeros, found, counter, revive)
        passes.update({id(n): k for _, n in zeros[met:]})
        if "zero" not in want or len(zeros) == met or len(zeros) >= MAX_ZEROS:
            break
        revive |= {id(n) for _, n in zeros[met:]}
    out = []
    # the root first (found by the last pass: earliest in forward order), its consequences after
    hits = [("zero", z) for z in zeros] + [(k, v) for k, v in found.items()]
    hits.sort(key=lambda kv: (-passes.get(id(kv[1][1]), 0), kv[1][0]))
    for kind, (_, node) in hits:
        fwd, loc, step, last = info.get(id(node), (None, None, None, -1))
        if step is None:  # recorded before the first stepped probe: it belongs to the next one
            step = next((e.step for e in tr._entries[last + 1:] if e.step is not None), None)
        node_name = type(node).__name__
        cause = "zero_grad_op" if kind == "zero" else "nonfinite_backward"
        detail = ("it receives a non-zero gradient and passes exactly zero towards z0 (a "
                  "saturated clamp, a masked-out branch, ...)" if kind == "zero" else
                  "it receives a finite gradient and passes NaN/Inf towards z0")
        op = f"{fwd} ({node_name})" if fwd and not node_name.lower().startswith(fwd.lower()) \
            else (fwd or node_name)
        if kind == "zero" and out and passes.get(id(node), 0) < passes.get(id(hits[0][1][1]), 0):
            detail += (f"; a consequence: the gradient was already zero from {out[0].op} at "
                       f"{out[0].location} (step {out[0].step}) on, the root")
        out.append(BreakEvent(kind=kind, cause=cause, op=op, index=10_000 + len(out), step=step,
                              location=loc, detail=detail))
    return out


def _one_pass(loss: torch.Tensor, nodes: list[Any], reach: dict[int, bool], want: set[str],
              cotangent: torch.Tensor | None, z: torch.Tensor, zeros: list, found: dict,
              counter: list[int], revive: set[int]) -> None:
    """One backward pass with a hook on every node that leads to z0, appending the nodes that
    zero the gradient (and the first that makes it non-finite); the nodes in ``revive`` pass
    seeded noise towards z0 instead of their zeros."""
    seen = {id(n) for _, n in zeros}
    gen = torch.Generator().manual_seed(len(revive))

    def make_hook(node):
        def hook(grad_inputs, grad_outputs):
            counter[0] += 1
            if id(node) in revive:
                return tuple(None if g is None else torch.randn(
                    g.shape, generator=gen, dtype=g.dtype).to(g.device) for g in grad_inputs)
            toward = [g for g, (c, _) in zip(grad_inputs, node.next_functions)
                      if c is not None and reach.get(id(c), False) and g is not None]
            gout = [g for g in grad_outputs if g is not None]
            if not gout:
                return None
            with torch.no_grad():
                out_finite = all(bool(torch.isfinite(g).all()) for g in gout)
                out_nonzero = any(bool((g != 0).any()) for g in gout)
                if "zero" in want and len(zeros) < MAX_ZEROS and out_nonzero and out_finite \
                        and id(node) not in seen:
                    if all(not bool((g != 0).any()) for g in toward):
                        zeros.append((counter[0], node))
                if "nonfinite" in want and "nonfinite" not in found and out_finite and toward:
                    if any(not bool(torch.isfinite(g).all()) for g in toward):
                        found["nonfinite"] = (counter[0], node)
            return None
        return hook

    handles = [n.register_hook(make_hook(n)) for n in nodes
               if reach.get(id(n)) and getattr(n, "variable", None) is None]
    try:
        leaves = [v for v in (getattr(n, "variable", None) for n in nodes)
                  if isinstance(v, torch.Tensor) and v.requires_grad]
        if leaves:
            torch.autograd.grad(loss, leaves, grad_outputs=cotangent, allow_unused=True,
                                retain_graph=True)
    finally:
        for h in handles:
            h.remove()


def _topo(nodes: list[Any]) -> list[Any]:
    """Nodes in an order where each node comes before its next_functions (inputs)."""
    ids = {id(n) for n in nodes}
    indeg: dict[int, int] = {id(n): 0 for n in nodes}
    for n in nodes:
        for c, _ in n.next_functions:
            if c is not None and id(c) in ids:
                indeg[id(c)] += 1
    ready = [n for n in nodes if indeg[id(n)] == 0]
    order = []
    while ready:
        n = ready.pop()
        order.append(n)
        for c, _ in n.next_functions:
            if c is not None and id(c) in ids:
                indeg[id(c)] -= 1
                if indeg[id(c)] == 0:
                    ready.append(c)
    return order
