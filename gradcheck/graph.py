"""Iterative walks over the autograd graph (``grad_fn.next_functions``).

Sampler graphs are deep (steps x ops per denoiser call), so nothing here recurses.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

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


def leaf_tensors(root: torch.Tensor) -> list[torch.Tensor]:
    """All leaf tensors (``AccumulateGrad`` variables) that ``root``'s graph reaches: z0, step
    noise leaves, model parameters. Differentiating with respect to all of them computes exactly
    what ``root.backward()`` would, without touching any ``.grad``."""
    if root.grad_fn is None:
        return [root] if root.requires_grad else []
    out = []
    for node in iter_nodes([root.grad_fn]):
        var = getattr(node, "variable", None)
        if isinstance(var, torch.Tensor):
            out.append(var)
    return out


def is_connected(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    """True when ``tensor``'s autograd graph reaches the leaf ``target`` (so gradient that arrives
    at ``tensor`` is passed on to ``target``)."""
    if tensor is target:
        return True
    if not tensor.requires_grad or tensor.grad_fn is None:
        return False
    for node in iter_nodes([tensor.grad_fn]):
        if getattr(node, "variable", None) is target:
            return True
    return False


def count_nodes(root: torch.Tensor) -> int:
    """Number of autograd nodes behind ``root``."""
    if root.grad_fn is None:
        return 0
    return sum(1 for _ in iter_nodes([root.grad_fn]))
