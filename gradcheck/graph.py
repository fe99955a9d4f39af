"""Iterative walks over the autograd graph (``grad_fn.next_functions``).

Sampler graphs are deep (steps x ops per denoiser call), so nothing here recurses.
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import torch

from .records import OpGraph, OpRegion

#: A safety bound on how many nodes one walk visits. A 35-step sampler around a small UNet has a
#: few thousand nodes; this only stops a walk over a pathological graph from running for minutes.
MAX_NODES = 2_000_000


def iter_nodes(roots: list[Any], max_nodes: int = MAX_NODES) -> Iterator[Any]:
    """Yield every autograd node reachable from ``roots`` (grad_fn objects), each once."""
    stack = [r for r in roots if r is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        key = id(node)
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > max_nodes:
            raise RuntimeError(f"autograd graph has more than {max_nodes} nodes; walk stopped")
        yield node
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)


#: Backward nodes whose gradient is zero everywhere: a path through one carries no gradient.
ZERO_GRAD_NODES = {"RoundBackward0", "RoundBackward1", "FloorBackward0", "CeilBackward0",
                   "SignBackward0", "SgnBackward0", "TruncBackward0"}


def is_connected(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    """True when ``tensor``'s autograd graph reaches the leaf ``target`` along a path that can
    carry gradient (not through round/floor/sign/..., whose gradient is zero everywhere), so
    gradient that arrives at ``tensor`` is passed on to ``target``."""
    if tensor is target:
        return True
    if not tensor.requires_grad or tensor.grad_fn is None:
        return False
    # a probe of every step noise calls this during the sampler's forward: node types are told
    # once per type (``__name__`` builds a string a call), a leaf by its accumulator's type (a
    # getattr that misses raises and catches an AttributeError inside)
    stack, seen = [tensor.grad_fn], set()
    zero = _ZERO_GRAD_TYPES
    while stack:
        node = stack.pop()
        key = id(node)
        if key in seen:
            continue
        tn = type(node)
        z = zero.get(tn)
        if z is None:
            z = zero[tn] = tn.__name__ in ZERO_GRAD_NODES
        if z:
            continue
        seen.add(key)
        if tn is _ACCUMULATE_GRAD and node.variable is target:
            return True
        for c, _ in node.next_functions:
            if c is not None and id(c) not in seen:
                stack.append(c)
    return False


#: node type -> whether its gradient is zero everywhere (is_connected's cache of ZERO_GRAD_NODES)
_ZERO_GRAD_TYPES: dict[type, bool] = {}


#: the autograd node type of a leaf tensor's gradient accumulator
_ACCUMULATE_GRAD = type(torch.zeros(1, requires_grad=True).expand(1).grad_fn.next_functions[0][0])

#: Ops kept per region of the op-level view (a denoiser call of a large U-Net has a few thousand);
#: beyond it a region keeps its op counts only.
REGION_CAP = 5_000


def collapse(root: torch.Tensor | None, node_probes: dict[int, list[int]],
             leaf_probes: dict[int, list[int]], extra_roots: list[Any] = (),
             region_cap: int = REGION_CAP,
             ) -> tuple[list[torch.Tensor], int, list[list[int]], dict[int, dict[str, int]],
                        list[tuple[OpRegion, list[Any]]]]:
    """One walk of the recorded graph that yields what a diagnosis needs from it.

    Args:
        root: the loss (None when it is not in a graph).
        extra_roots: more grad_fn nodes to start from (the probes': this reaches the parts of the
            graph that were cut off from the loss too).
        node_probes: id(grad_fn) -> probe indices recorded on that node (in probe order).
        leaf_probes: id(leaf tensor) -> probe indices recorded on that leaf.
        region_cap: ops kept per region in the op-level view.

    Returns:
        (leaf tensors the loss reaches, total node count, probe edges [src, dst], unprobed ops per
        probe region, the op-level regions with their autograd nodes in node order). An edge
        [a, b] means probe b was computed from probe a through unprobed ops only.
    """
    with collector_paused():
        return _collapse(root, node_probes, leaf_probes, extra_roots, region_cap)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside (restored as it was; nested uses leave it
    to the outermost). A graph walk allocates a few small tuples and a node wrapper a node, all
    alive until it ends: with the collector on they trigger several young collections a walk,
    promote what is alive into the old generation and, every twenty-odd diagnoses, a full
    collection of the whole process (tens of ms on the built-in model's process: most of a record
    phase's overhead there). Only for gradcheck's own code, which makes no reference cycles: the
    user's sampler always runs with the collector as the user left it."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _collapse(root: torch.Tensor | None, node_probes: dict[int, list[int]],
              leaf_probes: dict[int, list[int]], extra_roots: list[Any], region_cap: int,
              ) -> tuple[list[torch.Tensor], int, list[list[int]], dict[int, dict[str, int]],
                         list[tuple[OpRegion, list[Any]]]]:
    loss_fn = root.grad_fn if root is not None else None
    if loss_fn is None and root is not None and root.requires_grad:
        return [root], 0, [], {}, []
    # every node below the loss lies in the region of its nearest probe above it, so a walk of
    # each probe's region (down to the next probes) covers the graph once: no separate full walk
    starts: list[Any] = []
    key: dict[int, list[int]] = {}
    for n in [loss_fn, *extra_roots]:
        if n is not None and id(n) in node_probes and id(n) not in key:
            key[id(n)] = node_probes[id(n)]
            starts.append(n)
    if loss_fn is not None and id(loss_fn) not in key:
        key[id(loss_fn)] = []
        starts.insert(0, loss_fn)
    seen_all: set[int] = set(key)
    names: dict[type, str] = {}
    leaves: dict[int, torch.Tensor] = {}
    edges: list[list[int]] = []
    regions: dict[int, dict[str, int]] = {}
    op_regions: list[tuple[OpRegion, list[Any]]] = []
    for n in starts:
        here = key[id(n)]
        for a, b in zip(here, here[1:]):  # several probes on one tensor: chain them
            edges.append([a, b])
        reg, nodes, ops, srcs, met = _region(n, here, key, leaf_probes, region_cap, names,
                                             leaves)
        seen_all |= met
        if len(seen_all) > MAX_NODES:
            raise RuntimeError(f"autograd graph has more than {MAX_NODES} nodes; walk stopped")
        if here:
            edges.extend([src, here[0]] for src in sorted(srcs))
            regions[here[0]] = ops
            op_regions.append((reg, nodes))
    return list(leaves.values()), len(seen_all), edges, regions, op_regions


def _region(n: Any, here: list[int], key: dict[int, list[int]],
            leaf_probes: dict[int, list[int]], region_cap: int, names: dict[type, str],
            leaves: dict[int, torch.Tensor]
            ) -> tuple[OpRegion, list[Any], dict[str, int], set[int], set[int]]:
    """The ops between the probed node ``n`` and the probes it was computed from: (its region,
    the nodes kept, the op counts by type, the probes it starts from, every node met). Leaves
    met are added to ``leaves``."""
    ops: dict[str, int] = {}
    # the op-level view: node 0 is the op that made the probed value
    local: dict[int, int] = {id(n): 0}
    nodes: list[Any] = [n]
    reg = OpRegion(probe=here[0] if here else -1, ops=[type(n).__name__])
    o_edges: set[tuple[int, int]] = set()
    o_srcs: set[tuple[int, int]] = set()
    weights: set[int] = set()
    # a stack of (a node's next_functions, its index): one entry a node, not one an edge
    stack = [(n.next_functions, 0)]
    push, pop = stack.append, stack.pop
    srcs: set[int] = set()
    over: set[int] = set()  # nodes met beyond region_cap (counted, not kept)
    accs: set[int] = set()  # the leaves' accumulators met
    reg_ops = reg.ops
    # the hot loop of a diagnosis's record phase (about a us a node). A node's first visit
    # is told by ``local`` (its index in the region), so no separate seen-set; a type's name
    # is looked up once per walk (``type.__name__`` builds a new string a call); leaves are
    # told by their type (only AccumulateGrad has .variable); no generators
    while stack:
        nf, parent = pop()
        for c, _ in nf:
            if c is None:
                continue
            cid = id(c)
            i = local.get(cid)
            if i is not None:  # an op met before in this region: one more edge
                if parent >= 0:
                    o_edges.add((i, parent))
                continue
            tc = type(c)
            if tc is _ACCUMULATE_GRAD:  # a leaf: z0, a step-noise leaf, a weight
                var = c.variable
                accs.add(cid)
                leaves[id(var)] = var
                lp = leaf_probes.get(id(var))
                if lp is not None:
                    srcs.add(lp[-1])
                    if parent >= 0:
                        o_srcs.add((lp[-1], parent))
                else:
                    weights.add(id(var))
                continue
            pk = key.get(cid)
            if pk is not None:  # a probe's value: the region ends here
                if pk:
                    srcs.add(pk[-1])
                    if parent >= 0:
                        o_srcs.add((pk[-1], parent))
                continue
            tname = names.get(tc)
            if tname is None:
                tname = names[tc] = tc.__name__
            k = len(nodes)
            if k < region_cap:
                local[cid] = k
                nodes.append(c)
                reg_ops.append(tname)
                if parent >= 0:
                    o_edges.add((k, parent))
            elif cid in over:
                continue
            else:
                over.add(cid)
                reg.dropped += 1
                k = -1
            ops[tname] = ops.get(tname, 0) + 1
            push((c.next_functions, k))
    reg.edges = sorted(o_edges)  # tuples of ints: the cyclic collector stops tracking them
    reg.sources = sorted(o_srcs)
    reg.weights = len(weights)
    return reg, nodes, ops, srcs, set(local) | over | accs


def op_graph(root: torch.Tensor, max_nodes: int = 20_000) -> OpGraph | None:
    """The op-level backward graph of ``root`` as data (walked iteratively: sampler graphs are
    too deep to recurse over): node ``i`` is ``labels[i]`` (the backward node's type, or
    ``leaf (shape)`` for a leaf tensor), an edge ``[a, b]`` means node b was computed from node a.
    Nodes are numbered in the order the walk meets them, so the same run gives the same data.
    None when ``root`` is not in a graph or the graph has more than ``max_nodes`` nodes."""
    if root.grad_fn is None:
        return None
    ids: dict[int, int] = {}
    labels: list[str] = []
    edges: list[list[int]] = []

    def num(node: Any) -> int:
        if id(node) not in ids:
            ids[id(node)] = len(labels)
            var = getattr(node, "variable", None)
            labels.append(f"leaf {tuple(var.shape)}" if isinstance(var, torch.Tensor)
                          else type(node).__name__)
        return ids[id(node)]

    with collector_paused():
        for count, n in enumerate(iter_nodes([root.grad_fn]), 1):
            if count > max_nodes:
                return None
            dst = num(n)
            for c, _ in n.next_functions:
                if c is not None:
                    edges.append([num(c), dst])
    return OpGraph(labels=labels, edges=edges)


def reachable(seeds: Any, adjacency: dict[int, list[int]]) -> set[int]:
    """Every int reachable from ``seeds`` along ``adjacency`` (seeds included), iteratively."""
    out: set[int] = set()
    stack = list(seeds)
    while stack:
        i = stack.pop()
        if i not in out:
            out.add(i)
            stack.extend(adjacency.get(i, ()))
    return out


def not_asked(n_ops: int, edges: list[tuple[int, int]], sources: list[tuple[int, int]],
              needed: set[int]) -> list[int]:
    """The ops of a region that the backward pass did not differentiate: those with no path
    down to a differentiated input, through the region's ``edges`` ([a, b]: b computed from a)
    and its ``sources`` ([probe, b]: b computed from that probe's value; ``needed``: the
    probes whose value lies on a differentiated path). They read weights only (a sigma
    embedding, a weight's transpose): with the weights' gradient not asked for, none arrives
    at them, and that is not a break."""
    up: dict[int, list[int]] = {}
    for a, b in edges:
        up.setdefault(a, []).append(b)
    on = reachable((b for k, b in sources if k in needed), up)
    return [i for i in range(n_ops) if i not in on]
