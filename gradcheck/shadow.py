"""A float64 shadow of an adapted sampler (issue 28): the same sampler around a float64 copy of
its denoiser, so that a bf16 or float32 denoiser's gradient is judged at float64's tolerance
(:func:`gradcheck.evidence.shadow_check`: one forward+backward and the float64 numeric check).

The denoiser an adapter knows is cast as it can be, never changing the user's model for good:

- an ``nn.Module``, or a bound method of one (``model.forward``, ``net.denoise``): a deep copy,
  cast; the user's module is not touched;
- a function over modules (a closure such as Cosmos's ``x0_fn``, whose cells hold the network):
  those modules are cast in place for the shadow stage and cast back when it ends (float64 holds
  every bfloat16, float16 and float32 value, so the way back is exact), and their state dict is
  checked to be bit-identical afterwards;
- anything else (no module in reach): no shadow, and the report says why.

``device`` moves the copy (``"cpu"``: for a float64 copy that does not fit beside the model).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from .errors import GradcheckError


class CastDenoiser:
    """The float64 denoiser of one shadow stage; :meth:`close` undoes an in-place cast."""

    def __init__(self, den: Any, restore: Callable[[], None] | None = None,
                 how: str = "a float64 copy", nbytes: int = 0) -> None:
        self.den = den
        self._restore = restore
        self.how = how
        self.nbytes = nbytes  # the cast tensors' memory (parameters and buffers)

    def close(self) -> None:
        if self._restore is not None:
            restore, self._restore = self._restore, None
            restore()


def _modules_in_closure(fn: Any, depth: int = 3) -> list[torch.nn.Module]:
    """The modules a function's closure holds, through closed-over functions (``depth`` deep)."""
    cells = getattr(fn, "__closure__", None) or ()
    found: list[torch.nn.Module] = []
    for c in cells:
        try:
            v = c.cell_contents
        except ValueError:  # an empty cell
            continue
        more = [v] if isinstance(v, torch.nn.Module) else \
            _modules_in_closure(v, depth - 1) if depth > 1 and callable(v) else []
        found += [m for m in more if all(m is not f for f in found)]
    return found


def _tensors(m: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(m.named_parameters()) + list(m.named_buffers())


def _state(mods: list[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: t.detach().clone() for k, t in m.state_dict().items()} for m in mods]


def cast_denoiser(den: Any, dtype: torch.dtype, device: Any = None) -> CastDenoiser | None:
    """The denoiser in ``dtype`` (see the module); None where no module is in reach."""
    inner = getattr(den, "inner", den)  # an instrumented denoiser: the user's own
    if isinstance(inner, torch.nn.Module):
        twin = copy.deepcopy(inner).to(device=device, dtype=dtype)
        return CastDenoiser(twin, nbytes=_nbytes([twin]))
    owner = getattr(inner, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        twin = copy.deepcopy(owner).to(device=device, dtype=dtype)
        return CastDenoiser(getattr(twin, inner.__name__), nbytes=_nbytes([twin]))
    mods = _modules_in_closure(inner)
    if not mods:
        return None
    before = _state(mods)
    kept = [{k: (t.dtype, t.device) for k, t in _tensors(m)} for m in mods]
    for m in mods:
        m.to(device=device, dtype=dtype)

    def restore() -> None:
        for m, was in zip(mods, kept):
            for k, t in _tensors(m):  # each tensor back to its own dtype and device
                dt, dev = was[k]
                if (t.dtype, t.device) != (dt, dev):
                    t.data = t.data.to(device=dev, dtype=dt)
        after = _state(mods)
        if any(a.keys() != b.keys() or any(a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])
                                           for k in a) for a, b in zip(before, after)):
            raise GradcheckError("the float64 shadow could not restore the denoiser's modules "
                                 "bit for bit (their state dict changed)")
    return CastDenoiser(inner, restore, how="its modules cast in place and back",
                        nbytes=_nbytes(mods))


def _nbytes(mods: list[torch.nn.Module]) -> int:
    return sum(t.numel() * t.element_size() for m in mods for _, t in _tensors(m))
