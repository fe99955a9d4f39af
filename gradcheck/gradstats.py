"""A probed gradient, summarised without a device sync: its statistics as one small tensor
(:func:`grad_stats`), small gradients held until the trace closes and then summarised in one batch
(:class:`HeldGrads`), and the budget for gradients a backward may capture (:class:`CaptureBudget`).
"""
from __future__ import annotations

import math
from typing import Any

import torch


def grad_stats(g: torch.Tensor) -> torch.Tensor:
    """[L2 norm, sum |g|, max |g|, finite count] as one small tensor on g's device. No sync;
    mean |g| and the non-finite count are derived from it when the trace closes."""
    with torch.no_grad():
        g = g.detach()
        if g.numel() == 0:
            return torch.zeros(4, dtype=torch.float32, device=g.device)
        acc = g.dtype if g.dtype in (torch.float32, torch.float64) else torch.float32
        # |g| summed and maximised directly: torch's vector_norm takes a slow path for the 1- and
        # inf-norms on CPU (6x and 20x a sum of |g| on a video latent's gradient, 1.8M elements)
        a = g.abs()
        return torch.stack([
            torch.linalg.vector_norm(g, dtype=acc),
            a.sum(dtype=acc),
            a.amax().to(acc),
            torch.isfinite(g).sum(dtype=acc),
        ])


#: gradients of at most this many elements are held (not copied) until the trace closes and then
#: summarised all together, a few batched reductions instead of a handful of small ops a probe:
#: on a small model those ops are a measurable part of the backward pass. Larger gradients (a
#: video latent's), and any beyond DEFER_BYTES in all, are summarised in the hook as before:
#: stacking them for a batched reduction copies more than the per-op overhead it saves (the
#: break-even on this CPU is a few thousand elements).
DEFER_NUMEL = 1 << 12
DEFER_BYTES = 8 << 20
HELD_DTYPES = (torch.float32, torch.float64)


def _norms_along(flat: torch.Tensor, p: float) -> torch.Tensor:
    """The p-norm (2, 1 or inf) of each row: sums and maxima of |x| for 1 and inf (torch's
    vector_norm along a dimension is 7x and 17x slower there for the held gradients' 112 x 256)."""
    if p == 2:
        return torch.linalg.vector_norm(flat, dim=1)
    if p == 1:
        return flat.abs().sum(1)
    if p == math.inf:
        return flat.abs().amax(1)
    return torch.linalg.vector_norm(flat, p, dim=1)


def small_strided(t: torch.Tensor, numel: int) -> int:
    """``t``'s element count when it is a plain strided tensor (no subclass) of 1 to ``numel``
    elements, else 0: what a held or captured gradient may be."""
    n = t.numel()
    return n if type(t) is torch.Tensor and 0 < n <= numel and t.layout is torch.strided else 0


class HeldGrads:
    """Small gradients held by key until :meth:`flush`, then summarised in one batch per device,
    dtype and shape. Holding a reference never changes the gradient: autograd accumulates in
    place only into a buffer nobody else refers to. Used by the probes and by the op detail's
    per-op norms (:class:`gradcheck.opdetail.OpGrads`)."""

    def __init__(self) -> None:
        self.held: dict[Any, torch.Tensor] = {}
        self.nbytes = 0

    def take(self, key: Any, g: torch.Tensor) -> bool:
        """Hold ``g`` under ``key`` (replacing an earlier one: a hook that fires again keeps
        the last) if it is small and the budget allows; False: the caller summarises it now."""
        n = small_strided(g, DEFER_NUMEL)
        if not n or g.dtype not in HELD_DTYPES:
            self.drop(key)
            return False
        held = self.held
        if key not in held:
            size = n * g.element_size()
            if self.nbytes + size > DEFER_BYTES:
                return False
            self.nbytes += size
        held[key] = g.detach() if g.requires_grad else g  # (create_graph: not the graph)
        return True

    def drop(self, key: Any) -> None:
        """Forget what is held under ``key`` (it was summarised in its hook since)."""
        self.held.pop(key, None)

    def flush(self, norms: tuple[float, ...] = (2, 1, math.inf)) -> dict[Any, list[float]]:
        """Summarise every held gradient, let go of it: key -> [L2 norm, sum |g|, max |g|,
        finite count] (``norms=(2,)``: [L2 norm, finite count]). Gradients of one shape (a
        sampler's states and denoiser inputs share the latent's) are stacked and reduced along
        a dimension: a reduction a norm and one transfer for the lot."""
        groups: dict[tuple, list[Any]] = {}
        held = self.held
        for k, g in held.items():
            groups.setdefault((g.device, g.dtype, g.shape), []).append(k)
        values: dict[Any, list[float]] = {}
        with torch.no_grad():
            for keys in groups.values():
                flat = torch.stack([held[k] for k in keys]).reshape(len(keys), -1)
                rows = torch.stack([_norms_along(flat, p) for p in norms], dim=1).tolist()
                n = flat.shape[1]
                for k, row in zip(keys, rows):
                    # a finite L2 norm means every element is finite; count only otherwise
                    finite = n if math.isfinite(row[0]) else int(torch.isfinite(held[k]).sum())
                    values[k] = [*row, float(finite)]
        self.held, self.nbytes = {}, 0
        return values


class CaptureBudget:
    """Which values' gradients a backward may capture (hand over together when it returns):
    plain strided tensors of at most ``numel`` elements, while their gradients stay within
    ``nbytes`` in all (each one taken is counted)."""

    def __init__(self, numel: int, nbytes: int) -> None:
        self.numel, self.left = numel, nbytes

    def take(self, t: torch.Tensor) -> bool:
        n = small_strided(t, self.numel)
        if not n:
            return False
        size = n * t.element_size()
        if size > self.left:
            return False
        self.left -= size
        return True
