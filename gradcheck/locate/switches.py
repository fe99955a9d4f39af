"""The provenance pass's subscribers to torch functions that autograd does not see
(:mod:`gradcheck.patches`): the grad-mode switch that turned the gradient off, with the user's
file:line (:class:`GradSwitches`), and torch.distributed's collectives applied to a value that
carries z0's gradient (:class:`Collectives`).
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable

import torch

from .. import patches
from ..records import BreakEvent
from ..torch_internals import grad_switch_site, tensors_in
from .primary import ValueFacts

#: ``prov`` below is the running :class:`gradcheck.locate.provenance.Provenance` (typed Any: it
#: imports this module)

#: torch.distributed's collectives (not autograd-aware): which positional argument they write
#: into, and which they read from (None: the same as written)
COLLECTIVES = {
    "all_reduce": (0, None), "broadcast": (0, None), "reduce": (0, None),
    "all_gather": (0, 1), "all_gather_into_tensor": (0, 1), "gather": (1, 0),
    "scatter": (0, 1), "reduce_scatter": (0, 1), "reduce_scatter_tensor": (0, 1),
    "all_to_all": (0, 1), "all_to_all_single": (0, 1), "recv": (0, None), "irecv": (0, None),
    "send": (None, 0), "isend": (None, 0),
}


class Collectives:
    """While the provenance pass runs, wraps torch.distributed's collectives: one applied to a
    value that carries z0's gradient is a cut (autograd does not see it), named with the user's
    file:line; what it writes inherits the cut (or the earlier one it carried)."""

    def __init__(self, prov: Any) -> None:
        self.prov = prov
        self.subscriptions = contextlib.ExitStack()

    def __enter__(self) -> Collectives:
        for name, (out_pos, in_pos) in COLLECTIVES.items():
            self.subscriptions.enter_context(
                patches.collective(name).subscribe(self._wrap(name, out_pos, in_pos)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.subscriptions.close()

    def _wrap(self, name: str, out_pos: int | None,
              in_pos: int | None) -> Callable[..., Any]:
        prov = self.prov

        def before(args: tuple) -> tuple[list[torch.Tensor], BreakEvent | None]:
            pos = in_pos if in_pos is not None else out_pos
            src = tensors_in(args[pos]) if pos is not None and len(args) > pos else []
            dep = [t for t in src if (m := prov.get(t)) is not None and m.dep]
            ev = None
            if any(prov.gconn(t) for t in dep):
                ev = prov._event("hard", "non_autograd_collective", f"torch.distributed.{name}",
                                 detail="its result carries no gradient back to z0")
            elif dep:  # already cut before: the result carries that cut on
                ev = next((m.ev for t in dep if (m := prov.get(t)) and m.ev is not None), None)
            return dep, ev

        def wrapped(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            try:
                dep, ev = before(args)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the call still runs
                prov.failed(f"torch.distributed.{name}", exc)
                return fn(*args, **kwargs)
            res = fn(*args, **kwargs)
            try:
                if dep and out_pos is not None and len(args) > out_pos:
                    for t in tensors_in(args[out_pos]):
                        prov._set(t, ValueFacts(dep=True, gconn=False, rg=t.requires_grad,
                                                ev=ev))
            except Exception as exc:  # noqa: BLE001
                prov.failed(f"torch.distributed.{name}", exc)
            return res

        return wrapped


def _switches_off(location: str | None) -> bool:
    """Whether the source line at ``path:line`` literally switches grad off
    (``set_grad_enabled(False)``, ``no_grad().__enter__()``), not restores a saved mode."""
    if not location or ":" not in location:
        return False
    import linecache
    import os

    path, _, line = location.rpartition(":")
    try:
        text = linecache.getline(os.path.abspath(path), int(line))
    except ValueError:
        return False
    return bool(re.search(r"set_grad_enabled\(\s*False|no_grad\(\)\.__enter__", text))


class GradSwitches:
    """While the provenance pass runs, wraps ``torch._C._set_grad_enabled`` (what ``no_grad``,
    ``set_grad_enabled`` and their decorators call): the switch that turned grad mode off, and is
    in effect now, is remembered with the user's file:line, the step and whether it was a ``with``
    block (restored at its end) or a call whose effect stays."""

    def __init__(self, prov: Any) -> None:
        self.prov = prov
        self.subscription: Any = None

    def __enter__(self) -> GradSwitches:
        prov = self.prov

        def set_grad_enabled(call_next: Callable[..., Any], mode: bool) -> Any:
            try:
                if not mode:
                    loc, fn, api, block = grad_switch_site()
                    site = {"location": loc, "function": fn, "api": api, "block": block,
                            "step": prov._step()[0]}
                    if torch.is_grad_enabled():
                        prov.grad_off = site
                    if not block and _switches_off(loc):
                        # a call that switches off (even under an outer no_grad): it stays in
                        # effect until a restore; one to False that is not such a call
                        # (set_grad_enabled(prev)) is a restore
                        if not prov.grad_off_calls or \
                                prov.grad_off_calls[-1]["location"] != loc:
                            prov.grad_off_calls.append(site)
                    elif not block and prov.grad_off_calls:
                        prov.grad_off_calls.pop()
                else:
                    prov.grad_off = None
                    prov.grad_off_calls.clear()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the switch happens
                prov.failed("torch.set_grad_enabled", exc)
            return call_next(mode)

        self.subscription = patches.GRAD_MODE.subscribe(set_grad_enabled)
        self.subscription.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.subscription.__exit__(*exc)
