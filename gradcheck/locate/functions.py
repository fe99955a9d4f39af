"""Wrong gradients from custom ``torch.autograd.Function``s: the numeric check says reverse mode
disagrees with the loss, but the forward pass keeps the gradient path. The usual culprit is a
custom backward that does not match its forward (a scaled or transposed gradient, a missing
term). During the provenance pass every application of a custom Function to a z0-dependent value
is recorded (its class, its inputs, its step, the user's line); when the numeric check failed,
each application's vector-Jacobian product is compared with central finite differences of that
Function's forward alone, at that application's inputs, along a seeded direction: the first one
that disagrees is named, with the class and the file:line of its ``backward``.

Cost, reported: one backward and two forward passes of the Function alone per step size, per
recorded application (N cheap checks; no pass of the sampler or the denoiser).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ..records import BreakEvent
from ..rng import seeded
from .. import patches
from ..torch_internals import rel_path, tensors_in, user_frame

#: at most this many applications are recorded (the first ones, in forward order)
MAX_CALLS = 256
#: step sizes (relative to the input's RMS) and tolerance of each check, by precision
_STEPS = {torch.float64: ((1e-4, 1e-5, 1e-6), 1e-5), torch.float32: ((3e-2, 1e-2, 3e-3), 3e-2)}


class FunctionCalls:
    """While the provenance pass runs, records each ``Function.apply`` whose tensor inputs depend
    on z0 (``prov.dep``)."""

    def __init__(self, prov: Any) -> None:
        self.prov = prov
        self.calls: list[dict[str, Any]] = []
        self.saved: Any = None

    def __enter__(self) -> FunctionCalls:
        rec = self

        def apply(call_next: Any, cls: type, *args: Any, **kwargs: Any) -> Any:
            try:
                deps = [t for t in tensors_in((args, kwargs)) if rec.prov.dep(t)]
                if deps and len(rec.calls) < MAX_CALLS:
                    loc, fn = user_frame()
                    rec.calls.append({
                        "cls": cls, "kwargs": kwargs, "location": loc, "function": fn,
                        "step": rec.prov._step()[0],
                        "after": len(rec.prov.trace._entries),
                        "args": [a.detach().clone() if isinstance(a, torch.Tensor) else a
                                 for a in args]})
            except Exception as exc:  # noqa: BLE001 - counted and reported, the call runs
                rec.prov.failed(f"{getattr(cls, '__name__', cls)}.apply", exc)
            return call_next(cls, *args, **kwargs)

        if not patches.FUNCTION_APPLY.available:  # a torch without it: say so, record nothing
            self.prov.failed("autograd.Function.apply", TypeError(
                "not on this torch: custom Functions' applications are not recorded"))
        self.saved = patches.FUNCTION_APPLY.subscribe(apply)
        self.saved.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.saved.__exit__(*exc)
        entries = self.prov.trace._entries
        for call in self.calls:  # before the first stepped probe: the step of the next probe
            if call["step"] is None and call["after"] < len(entries):
                call["step"] = entries[call["after"]].step


def _where_backward(cls: type) -> str | None:
    fn = getattr(cls, "backward", None)
    try:
        path = inspect.getsourcefile(fn)
        line = inspect.getsourcelines(fn)[1]
    except (TypeError, OSError):
        return None
    return f"{rel_path(path) if path else '?'}:{line}"


def _outputs(res: Any) -> list[torch.Tensor]:
    return [t for t in tensors_in(res) if t.is_floating_point()]


def check_call(call: dict[str, Any], seed: int) -> tuple[float, float, float, bool] | None:
    """(reverse <d, J^T u>, finite differences <u, J d>, relative error, whether they agree)
    of one recorded application, along seeded directions u (output) and d (inputs); None when
    it has no float input or output to compare."""
    cls, args, kwargs = call["cls"], call["args"], call["kwargs"]
    pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if not pos:
        return None
    dtype = torch.float64
    g = torch.Generator().manual_seed(int(seed))

    def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        full = list(args)
        for i, x in zip(pos, xs):
            full[i] = x
        return _outputs(cls.apply(*full, **kwargs))

    base = [args[i].to(dtype) for i in pos]
    try:
        with torch.no_grad():
            outs0 = run(base)
    except Exception:  # noqa: BLE001 - a Function that runs in its own dtype only
        dtype = args[pos[0]].dtype
        base = [args[i] for i in pos]
        with torch.no_grad():
            outs0 = run(base)
    if not outs0:
        return None
    us = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs0]
    ds = [torch.randn(b.shape, generator=g, dtype=torch.float64).to(b) for b in base]
    norm = sum(float(d.double().square().sum()) for d in ds) ** 0.5 or 1.0
    ds = [d / norm for d in ds]
    xs = [b.detach().clone().requires_grad_(True) for b in base]
    with torch.enable_grad():
        outs = run(xs)
        grads = torch.autograd.grad(outs, xs, grad_outputs=us[:len(outs)], allow_unused=True)
    rev = sum(float((gr.double() * d.double()).sum()) for gr, d in zip(grads, ds)
              if gr is not None)
    hs, rtol = _STEPS.get(dtype, _STEPS[torch.float32])
    scale = max(1.0, max(float(b.double().abs().max()) for b in base))
    best = None
    for rel in hs:
        h = rel * scale
        with torch.no_grad():
            plus = run([b + h * d for b, d in zip(base, ds)])
            minus = run([b - h * d for b, d in zip(base, ds)])
        fd = sum(float((u.double() * (p.double() - m.double())).sum())
                 for u, p, m in zip(us, plus, minus)) / (2 * h)
        err = abs(fd - rev) / max(abs(fd), abs(rev), 1e-300)
        if best is None or err < best[2]:
            best = (rev, fd, err)
    rev, fd, err = best
    return rev, fd, err, not (err > rtol and abs(rev - fd) > 1e-12)  # NaN: not judged here


def wrong_backwards(calls: list[dict[str, Any]], seed: int) -> tuple[list[BreakEvent], int]:
    """The recorded applications whose backward disagrees with their forward (first first), and
    how many were checked."""
    out, checked, seen = [], 0, set()
    for k, call in enumerate(calls):
        key = (call["cls"], call["location"])
        if key in seen:  # the same Function at the same line: its first application tells
            continue
        seen.add(key)
        with seeded(seed, torch.device("cpu")):
            try:
                res = check_call(call, seed + k)
            except Exception:  # noqa: BLE001 - a Function that cannot be re-run alone
                continue
        checked += 1
        if res is None or res[3]:
            continue
        rev, fd, err, _ = res
        cls = call["cls"]
        out.append(BreakEvent(
            kind="bias", cause="custom_backward", op=f"{cls.__qualname__}.backward",
            index=20_000 + len(out), step=call["step"], location=_where_backward(cls),
            function="backward",
            detail=(f"its backward disagrees with finite differences of its forward at the inputs "
                    f"it had (applied at {call['location']}): <d, J^T u> = {rev:.6e} vs "
                    f"{fd:.6e}, relative error {err:.2e}")))
    return out, checked
