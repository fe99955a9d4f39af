"""Which branch each piecewise op took: tells a finite difference that straddles a kink.

A sampler with ``clamp`` / ``clip_sample``, dynamic thresholding, ``relu``, ``abs``, ``max`` or a
``where`` on a comparison is piecewise smooth. A central difference ``L(z + hv) - L(z - hv)`` is
an honest estimate of the derivative only when both ends lie on the same branches; when one
element of one clamp switched sides between them, it straddles a kink and may disagree with a
right reverse-mode gradient. :class:`BranchWatch` runs a forward pass under a
``TorchFunctionMode`` that records, for every piecewise op, a compact signature of its branch
mask (how many elements on each side, and a position-weighted sum of them); two runs straddle a
kink exactly when their signatures differ. It costs one cheap reduction per piecewise op and is
used only where a difference disagrees (two more forward passes per step size checked).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

#: ops whose result is already the branch mask (a comparison: a where's condition, a mask)
_COMPARE = {"gt", "lt", "ge", "le", "greater", "less", "greater_equal", "less_equal",
            "__gt__", "__lt__", "__ge__", "__le__"}
#: ops with a kink, and the mask of the branch each element took
_KINKED = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max", "relu", "relu_",
           "abs", "abs_", "maximum", "minimum", "fmax", "fmin", "hardtanh", "hardtanh_",
           "leaky_relu", "relu6", "threshold", "max", "min", "amax", "amin", "quantile",
           "sort", "topk", "kthvalue", "median"}


def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or ""


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


def _mask(name: str, args: tuple, kwargs: dict, out: Any) -> torch.Tensor | None:
    """An integer tensor saying which branch each element took (None: no kink to watch)."""
    x = _first_tensor(args, kwargs)
    if name in _COMPARE:
        return out if isinstance(out, torch.Tensor) and out.dtype == torch.bool else None
    if x is None or not x.is_floating_point():
        return None
    res = out[0] if isinstance(out, (tuple, list)) and out else out
    if name in ("max", "min", "amax", "amin", "quantile", "sort", "topk", "kthvalue",
                "median"):
        # reductions and orderings: which elements were picked (their indices when given)
        if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], torch.Tensor):
            return out[1]
        if name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            return (x >= args[1]) if name == "max" else (x <= args[1])  # elementwise form
        return None  # a full reduction without indices: no mask to compare cheaply
    if name in ("maximum", "fmax") and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return x >= args[1]
    if name in ("minimum", "fmin") and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return x <= args[1]
    if name in ("abs", "abs_"):
        return x >= 0
    if isinstance(res, torch.Tensor) and res.shape == x.shape and res.dtype == x.dtype:
        # clamp, relu, hardtanh, threshold, leaky_relu: where the op changed the value
        # (in-place forms: x is res; compare with a pre-image is impossible, so by where it
        # is pinned at a bound)
        if res is x:
            return None
        return res != x
    return None


class BranchWatch(TorchFunctionMode):
    """Records the branch signature of every piecewise op run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.signature: list[tuple[str, int, int]] = []
        self._pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        #: piecewise ops whose branch mask could not be read (not watched; they still ran)
        self.unread = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        if name in ("clamp_", "clip_", "relu_", "abs_", "hardtanh_") and args and \
                isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            before = args[0].detach().clone()  # in place: keep what it was
            out = func(*args, **kwargs)
            self._note(name, (before,) + tuple(args[1:]), kwargs, out.detach() if
                       isinstance(out, torch.Tensor) else out)
            return out
        out = func(*args, **kwargs)
        if name in _COMPARE or name in _KINKED:
            self._note(name, args, kwargs, out)
        return out

    def _note(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        try:
            with torch.no_grad():
                m = _mask(name, args, kwargs, out)
                if m is None or m.numel() == 0:
                    return
                m = m.detach().reshape(-1).to(torch.int64)
                pos = torch.arange(1, m.numel() + 1, device=m.device, dtype=torch.int64)
                self._pending.append((name, m.sum(), (m * pos).sum()))
        except Exception:  # noqa: BLE001 - an op it cannot read is not watched, never broken
            self.unread += 1  # counted: how many ops the signature could not read

    def finish(self) -> list[tuple[str, int, int]]:
        """The signature as plain numbers (one transfer per op, at the end)."""
        self.signature = [(n, int(a), int(b)) for n, a, b in self._pending]
        self._pending = []
        return self.signature


def signature(run: Callable[[torch.Tensor], Any], z: torch.Tensor) -> list[tuple[str, int, int]]:
    """The branch signature of one forward pass of ``run`` at ``z`` (no autograd)."""
    watch = BranchWatch()
    with torch.no_grad(), watch:
        run(z)
    return watch.finish()
