"""Directional numeric check: finite differences of the loss against reverse mode.

    fd(h)   = (L(z0 + h v) - L(z0 - h v)) / 2h          (central differences, v a seeded unit vector)
    reverse = <v, dL/dz0>                                (from the backward pass being diagnosed)

Reverse mode, not forward mode: forward AD ignores ``no_grad`` and would call a broken sampler
healthy (shared/reference/anchors.md). The cost is 2 forward passes per step size, independent of
the size of z0. The step h is swept over a few values scaled to z0's RMS, since truncation error
grows with h and round-off error with 1/h; the best-agreeing h is reported. The tolerance is
``rtol * max(|fd|, |reverse|)`` plus the round-off floor ``c * eps_dtype * |L| / h``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .records import NumericResult

#: Per dtype: step sizes (relative to z0's RMS) and the relative tolerance.
SETTINGS: dict[torch.dtype, tuple[tuple[float, ...], float]] = {
    torch.float64: ((1e-3, 1e-4, 1e-5), 1e-5),
    torch.float32: ((3e-2, 1e-2, 3e-3), 2e-2),
    torch.float16: ((3e-1, 1e-1, 3e-2), 1e-1),
    torch.bfloat16: ((3e-1, 1e-1, 3e-2), 1e-1),
}
ROUNDOFF_FACTOR = 8.0


def unit_direction(like: torch.Tensor, seed: int,
                   reduce: Callable[[float], float] | None = None,
                   shard_of: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """A seeded random unit vector shaped like ``like`` (drawn on the CPU, so device-independent).
    With ``reduce`` (a sum over processes) and ``shard_of`` (this rank's part of a tensor drawn
    whole, :meth:`gradcheck.policy.Sharded.shard_of`), ``like`` is one shard and the vector is
    this shard of the very unit vector one process would draw."""
    g = torch.Generator().manual_seed(int(seed))
    if shard_of is None:
        v = torch.randn(like.shape, generator=g, dtype=torch.float64)
    else:
        v = shard_of(like, lambda shape: torch.randn(shape, generator=g, dtype=torch.float64))
    norm = float(torch.linalg.vector_norm(v)) if reduce is None else \
        reduce(float(v.square().sum())) ** 0.5
    return (v / norm).to(device=like.device, dtype=like.dtype)


def directional_check(loss_at: Callable[[torch.Tensor], float], z0: torch.Tensor,
                      grad: torch.Tensor | None, *, seed: int = 0,
                      working: torch.dtype | None = None,
                      reduce: Callable[[float], float] | None = None,
                      shard_of: Callable[..., torch.Tensor] | None = None) -> NumericResult:
    """Compare finite differences of ``loss_at`` along a seeded unit direction with ``grad``.

    Args:
        loss_at: ``z -> float``, the loss of the sampler at z (deterministic, no autograd needed).
        z0: the point of the check.
        grad: dL/dz0 from reverse mode, or None when no gradient reached z0 (taken as 0).
        seed: seeds the direction.
        working: the precision the sampler really computes in, if lower than z0's (a float32
            step inside a float64 run): its step sizes, tolerance and machine epsilon are used.
        reduce: sums a float over processes when z0 is one shard of a distributed batch (the
            direction is then a unit vector of the whole z0 and ``loss_at`` the global loss).
        shard_of: with ``reduce``, cuts this rank's part out of a tensor drawn whole, so the
            direction is the single-process one.
    """
    prec = working or z0.dtype
    hs, rtol = SETTINGS.get(prec, SETTINGS[torch.float32])
    eps_mach = torch.finfo(prec).eps
    z = z0.detach()
    red = reduce or (lambda x: x)
    v = unit_direction(z, seed, reduce, shard_of)
    reverse = red(0.0 if grad is None else
                  float((grad.detach().to(torch.float64) * v.double()).sum()))
    scale = max(1.0, (red(float(z.double().square().sum())) / red(float(z.numel()))) ** 0.5)
    sweep = []
    best = None
    for rel in hs:
        h = rel * scale
        lp, lm = loss_at(z + h * v), loss_at(z - h * v)
        fd = (lp - lm) / (2 * h)
        floor = ROUNDOFF_FACTOR * eps_mach * max(abs(lp), abs(lm)) / h
        err = abs(fd - reverse)
        row = {"eps": h, "fd": fd, "abs_error": err, "roundoff_floor": floor}
        sweep.append(row)
        if best is None or err < best["abs_error"]:
            best = row
    mag = max(abs(best["fd"]), abs(reverse))
    return NumericResult(
        dtype=str(z0.dtype).replace("torch.", ""), direction_seed=int(seed), eps=best["eps"],
        fd=best["fd"], reverse=reverse, abs_error=best["abs_error"],
        rel_error=best["abs_error"] / mag if mag > 0 else 0.0, rtol=rtol,
        atol=best["roundoff_floor"], sweep=sweep,
        working_dtype=str(working).replace("torch.", "") if working is not None else None,
    )
