"""Each denoiser call's gradient on its own (issue 28): the VJP of one call at the inputs the
float64 shadow run recorded, against central finite differences of that call alone.

For call k with input x_k (and its sigma and other arguments as recorded), a seeded unit input
direction u and a seeded output cotangent w:

    reverse_k = <u, d/dx <w, D(x)>|x_k>                  (one forward + backward of D alone)
    fd_k      = (<w, D(x_k + h u)> - <w, D(x_k - h u)>) / 2h  (two forwards of D alone)

in float64, where a wrong custom backward or gradient hook inside the denoiser shows at once,
whatever the rest of the sampler does: the first call that disagrees names the step the wrong
gradient comes from. Bought where the shadow's whole-sampler check disagrees (to localise it)
or at ``checks="full"``; its cost is a few denoiser calls per recorded call (in the report).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from .denoiser_calls import output_tensor
from .sampling.noise import sub_seed

#: float64: the relative tolerance and the round-off factor of the per-call difference
RTOL, ROUNDOFF = 1e-5, 8.0
_STREAM = 11


class CallCapture:
    """A denoiser that keeps (a float64 copy of) each call's inputs while ``on``."""

    def __init__(self, den: Any) -> None:
        self.den = den
        self.on = False
        self.calls: list[tuple[torch.Tensor, Any, tuple, dict]] = []

    def __call__(self, x: torch.Tensor, sigma: Any, *args: Any, **kwargs: Any) -> Any:
        if self.on and isinstance(x, torch.Tensor):
            s = sigma.detach().clone() if isinstance(sigma, torch.Tensor) else sigma
            self.calls.append((x.detach().clone(), s, args, kwargs))
        return self.den(x, sigma, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["den"], name)


def _unit(like: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(like.shape, generator=g, dtype=torch.float64)
    return (v / v.norm()).to(like)


def check_call(den: Any, k: int, x: torch.Tensor, sigma: Any, args: tuple, kwargs: dict,
               seed: int) -> dict[str, Any]:
    """One call's VJP against finite differences of that call alone (see the module)."""
    def f(xx: torch.Tensor) -> torch.Tensor:
        out = output_tensor(den(xx, sigma, *args, **kwargs))
        if out is None:
            raise TypeError("the denoiser returned no tensor")
        return out

    u = _unit(x, sub_seed(seed, _STREAM, 2 * k))
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        out = f(xr)
        w = _unit(out.detach(), sub_seed(seed, _STREAM, 2 * k + 1))
        (g,) = torch.autograd.grad((out * w).sum(), [xr], allow_unused=True) \
            if out.requires_grad else (None,)
    reverse = 0.0 if g is None else float((g * u).sum())
    h = 1e-4 * max(1.0, float(x.double().square().mean()) ** 0.5)
    with torch.no_grad():
        lp, lm = float((f(x + h * u) * w).sum()), float((f(x - h * u) * w).sum())
    fd = (lp - lm) / (2 * h)
    floor = ROUNDOFF * 2.2e-16 * max(abs(lp), abs(lm), 1e-300) / h
    err = abs(fd - reverse)
    mag = max(abs(fd), abs(reverse))
    return {"call": k, "fd": fd, "reverse": reverse, "eps": h,
            "rel_error": err / mag if mag > 0 else 0.0,
            "agrees": err <= RTOL * mag + floor and math.isfinite(err)}


def check_calls(capture: CallCapture, seed: int) -> list[dict[str, Any]]:
    """Every captured call, in order, until the first that disagrees (the rest are not needed
    to name where the wrong gradient starts)."""
    rows = []
    for k, (x, sigma, args, kwargs) in enumerate(capture.calls):
        t0 = time.perf_counter()
        rows.append(check_call(capture.den, k, x, sigma, args, kwargs, seed))
        rows[-1]["seconds"] = time.perf_counter() - t0
        if not rows[-1]["agrees"]:
            break
    return rows
