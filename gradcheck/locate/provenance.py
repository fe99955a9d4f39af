"""The locator's forward provenance pass: which values depend on z0, which still carry its
gradient, and the first op that cut, bypassed or escaped it.

Walking back from the loss cannot find a cut: the cut-off part is not in the graph. So the
locator re-runs the forward pass under a ``TorchFunctionMode`` that follows, for every tensor,

- ``dep``: does its value depend on z0 (taint through every op)?
- ``gconn``: does it still carry gradient to z0 (requires grad, computed from a tensor that does)?
- ``ev``: for a value with ``dep`` and not ``gconn``, the first op that cut it (the *event*);
- ``bias``: the first op that changed a value behind autograd's back (``.data`` writes, in-place
  writes under ``no_grad``): the gradient flows, but it is wrong;
- ``rand``: the random draw it came from, if it is fresh randomness not derived from z0.

An event is recorded at the first op whose output depends on z0 but no longer carries gradient
while one of its inputs did; its cause is classified from the grad mode, the stack (a
``@torch.no_grad()`` decorated entry point, a reentrant checkpoint), the op and the dtype. Which
event explains a failing check is decided in :mod:`.primary` (pure).

The bookkeeping never breaks the user's code: an op it cannot follow is counted, named and
reported (``LocatorResult.internal_failures``), never swallowed silently.
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .. import graph
from ..probes import Trace
from ..records import BreakEvent
from ..torch_internals import (
    caller_of_user_frame, decorated_on_stack, describe_sites, grad_off_sites,
    in_distribution_sample, in_reentrant_checkpoint, tensors_in, user_frame, user_frames,
)
from .opfacts import (
    ADDITIVE, CAST_OPS, COPY_CONSTRUCTORS, COPY_OPS, ESCAPE_OPS, GRAD_OFF_CAUSES, Inputs,
    MIXED_BIAS_CAUSES, NONDIFF_OPS, ONE_TO_ONE, PRODUCTS, RANDOM_OPS, SHAPE_ONLY,
    TAINTED_ESCAPES, VALUE_RANDOM, ZERO_GRAD_OPS, zero_factor,
)
from .primary import ValueFacts
from .taint import plain_floats, taint, tainted_in

#: how many failing ops the locator names (it counts them all)
MAX_FAILED_OPS = 8


def _name(func: Any) -> str:
    owner = getattr(func, "__self__", None)
    n = getattr(func, "__name__", None) or str(func)
    if n in ("__get__", "__set__") and owner is not None and hasattr(owner, "__name__"):
        return f"{owner.__name__}.{n}"  # a property: 'data.__get__', 'requires_grad.__set__'
    return n


class Provenance(TorchFunctionMode):
    """Follows z0-dependence and gradient connection through every torch call (see module doc)."""

    def __init__(self, tr: Trace, roots: list[torch.Tensor]) -> None:
        super().__init__()
        self.trace = tr
        self.roots = list(roots)
        self.meta: dict[int, tuple[weakref.ref, ValueFacts]] = {}
        self.events: list[BreakEvent] = []
        self.randomness: list[BreakEvent] = []
        #: the least precise floating dtype of any value computed from z0 (a sampler that casts
        #: down inside, e.g. a scheduler's float32 step, computes at that precision)
        self.lowest_dtype: torch.dtype | None = None
        self.grad_fn_info: dict[int, tuple[str, str | None, int | None]] = {}
        self._keep: list[Any] = []
        self.probe_meta: dict[int, ValueFacts] = {}
        self.probe_lines: dict[int, tuple] = {}  # probe index -> the user frames it was made in
        self.probe_before: dict[int, int] = {}  # id(event) -> the last probe before it
        #: ops whose bookkeeping raised: counted and named, reported, never silently dropped
        self.failures = 0
        self.failed_ops: list[str] = []
        #: the switch that turned grad mode off, while it is off (see GradSwitches)
        self.grad_off: dict[str, Any] | None = None
        #: switch-off calls in effect (not with blocks), outermost first, even under an outer
        #: no_grad: removing the outer one would leave them (see GradSwitches)
        self.grad_off_calls: list[dict[str, Any]] = []
        #: grad mode was already off when the sampler was called
        self.grad_off_at_start = not torch.is_grad_enabled()
        from ..gradmode import who_switched_off

        #: the switch that did it, if gradcheck.watch_grad_mode() saw it
        self.grad_off_before = who_switched_off() if self.grad_off_at_start else None
        #: cuts whose value was mixed back into a value that carries gradient (partial cuts)
        self.mixed_cuts: list[BreakEvent] = []
        #: z0-dependent values multiplied by a constant exact zero (see _constant_zero)
        self.constant_zeros: list[BreakEvent] = []
        #: float(x) of a z0-dependent x: its value -> the escape event
        self.escaped: dict[float, BreakEvent] = {}
        # every float() of a tensor, in order (the ordinal an intervention replays by), and
        # the ones of z0-dependent values: (ordinal, event)
        self.float_calls = 0
        self.float_escapes: list[tuple[int, BreakEvent]] = []
        for r in self.roots:
            self._set(r, ValueFacts(dep=True, gconn=r.requires_grad, rg=r.requires_grad))

    # -- bookkeeping ----------------------------------------------------------------------
    def failed(self, op: str, exc: BaseException) -> None:
        """The bookkeeping of ``op`` raised: count it and keep its name (the user's op ran)."""
        self.failures += 1
        if len(self.failed_ops) < MAX_FAILED_OPS:
            text = f"{op} ({type(exc).__name__}: {exc})"
            if text not in self.failed_ops:
                self.failed_ops.append(text[:160])

    def _set(self, t: torch.Tensor, m: ValueFacts) -> None:
        self.meta[id(t)] = (weakref.ref(t), m)

    def get(self, t: torch.Tensor) -> ValueFacts | None:
        entry = self.meta.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        m = entry[1]
        if t.requires_grad != m.rg:  # flipped after creation: a custom Function's output, or
            m.rg = t.requires_grad   # requires_grad_(True) on a leaf: ask the graph
            m.gconn = t.requires_grad and any(graph.is_connected(t, r) for r in self.roots)
            if t.grad_fn is not None and m.made_at is not None:  # the Function's own node
                op, loc, step, last = m.made_at
                self.grad_fn_info.setdefault(id(t.grad_fn), (type(t.grad_fn).__name__, loc,
                                                             step, last))
                self._keep.append(t.grad_fn)
        return m

    def dep(self, t: torch.Tensor) -> bool:
        m = self.get(t)
        return bool(m and m.dep)

    def gconn(self, t: torch.Tensor) -> bool:
        m = self.get(t)
        return bool(m and m.gconn and t.requires_grad)

    def _step(self) -> tuple[int | None, int]:
        entries = self.trace._entries
        last = len(entries) - 1
        step = next((e.step for e in reversed(entries) if e.step is not None), None)
        return step, last

    def _event(self, kind: str, cause: str, op: str, detail: str | None = None,
               location: tuple[str | None, str | None] | None = None) -> BreakEvent:
        step, last = self._step()
        loc, fn = location or user_frame()
        ev = BreakEvent(kind=kind, cause=cause, op=op, index=len(self.events), step=step,
                        location=loc, function=fn, detail=detail)
        if cause in GRAD_OFF_CAUSES:
            self._name_sites(ev)
        self.probe_before[id(ev)] = last  # resolved to probe names after the run
        self.events.append(ev)
        return ev

    def _name_sites(self, ev: BreakEvent) -> None:
        """Every grad-disabling site in effect now, outermost first, on the event and in its
        words: removing one of several leaves the gradient cut."""
        # outermost first: a switch made before the sampler ran, the decorators, the calls made
        # inside them, then the with blocks
        stack = grad_off_sites()
        decorators = [describe_sites([x]) for x in stack if x["api"].startswith("@")]
        blocks = [describe_sites([x]) for x in stack if not x["api"].startswith("@")]
        calls = list(self.grad_off_calls)
        off = self.grad_off or (self.grad_off_before if self.grad_off_at_start else None)
        before = []
        if off is not None and not off["block"] and all(
                c["location"] != off["location"] for c in calls):
            (before if off is self.grad_off_before else calls).insert(0, off)
        said = [f"{c['api']} at {c['location']} (a call that stays in effect)"
                for c in before], [f"{c['api']} at {c['location']} (a call that stays in "
                                   f"effect)" for c in calls]
        sites = said[0] + decorators + said[1] + blocks
        ev.sites = sites
        from ..allow import active

        if active():  # allow_grad neutralises what it can reach: this one it could not
            ev.detail = ((ev.detail + "; ") if ev.detail else "") + (
                "allow_grad was on, yet grad mode was off here: a switch allow_grad cannot "
                "reach (code compiled by torch.compile, a C++ guard such as "
                "torch._C._InferenceMode, another thread)")
        if len(sites) > 1:
            ev.detail = ((ev.detail + "; ") if ev.detail else "") + (
                f"grad is off here because of {len(sites)} sites, outermost first: "
                + "; ".join(f"({k}) {s}" for k, s in enumerate(sites, 1))
                + ": every one must change for the gradient to flow (or diagnose with "
                  "allow_grad=True to see the gradient they block)")

    def observe(self, index: int, t: torch.Tensor) -> None:
        """Trace observer: remember each probed tensor's state when it is probed, and where."""
        self.probe_lines[index] = user_frames()
        m = self.get(t)
        if m is None:  # a tensor no tracked op produced (e.g. torch.from_numpy): it is fresh
            self.probe_meta[index] = ValueFacts(dep=False, gconn=False, rg=t.requires_grad)
        else:
            self.probe_meta[index] = ValueFacts(dep=m.dep, gconn=self.gconn(t), rg=m.rg, ev=m.ev,
                                           bias=m.bias)

    # -- classification -------------------------------------------------------------------
    def _cause(self, name: str, out: torch.Tensor, grad_on: bool, inf_on: bool) -> tuple[str, str | None]:
        if inf_on:
            fn = decorated_on_stack(torch.inference_mode)
            return "inference_mode", (f"inside {fn}, decorated with @torch.inference_mode()"
                                      if fn else None)
        if not grad_on:
            if in_distribution_sample():
                return "distribution_sample", ("Distribution.sample() draws under "
                                               "torch.no_grad()")
            if in_reentrant_checkpoint():
                return "reentrant_checkpoint", ("torch.utils.checkpoint(use_reentrant=True) runs "
                                                "its function under no_grad when no input "
                                                "requires grad; pass the z0-dependent tensor as "
                                                "an input, or use use_reentrant=False")
            fn = decorated_on_stack(torch.no_grad)
            if fn:
                return "decorated_no_grad", f"function {fn}"
            off = self.grad_off
            if off is not None and not off["block"]:
                return "grad_mode_off", (
                    f"grad mode was switched off by {off['api']} at {off['location']}"
                    + (f" (step {off['step']})" if off["step"] is not None else "")
                    + " and stays off: no with-block restores it")
            if off is not None:
                return "no_grad", f"inside `with {off['api']}:` at {off['location']}"
            if self.grad_off_at_start and self.grad_off_before is not None and \
                    self.grad_off_before["block"]:
                before = self.grad_off_before
                return "no_grad", (f"grad mode was off when the sampler was called: the "
                                   f"diagnosis ran inside `with {before['api']}:` at "
                                   f"{before['location']}")
            if self.grad_off_at_start and self.grad_off_before is not None:
                before = self.grad_off_before
                return "grad_mode_off", (
                    f"grad mode was switched off by {before['api']} at {before['location']}"
                    + (f" (in {before['function']})" if before.get("function") else "")
                    + " before the sampler was called, and never back on")
            if self.grad_off_at_start:
                return "no_grad", ("grad mode was already off when the sampler was called: "
                                   "something switched it off before (torch.set_grad_enabled("
                                   "False) at import, say; gradcheck.watch_grad_mode() before "
                                   "importing it names the line), or diagnose ran inside "
                                   "no_grad")
            return "no_grad", None
        if name in ("detach", "detach_"):
            return "detach", None
        if name in COPY_CONSTRUCTORS:
            return "copy_constructor", f"torch.{name}() of a tensor copies its values, not its graph"
        if name in ("requires_grad_", "requires_grad.__set__"):
            return "requires_grad_false", None
        if name in NONDIFF_OPS:
            return "non_differentiable", None
        if not (out.is_floating_point() or out.is_complex()):
            if name in CAST_OPS:
                return "int_cast", f"to {str(out.dtype).replace('torch.', '')}"
            return "non_differentiable", f"output dtype {str(out.dtype).replace('torch.', '')}"
        return "unknown", None

    # -- the mode -------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        grad_on, inf_on = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        try:
            flat = tensors_in((args, kwargs))
            if name in SHAPE_ONLY or (name == "to" and len(flat) > 1):
                flat = flat[:1]  # t.to(other) takes only other's dtype and device
            pre = [(t, self.dep(t), self.gconn(t), self.get(t)) for t in flat]
        except Exception as exc:  # noqa: BLE001 - the locator must never break the user's code
            self.failed(name, exc)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        try:
            if name == "__float__":
                self.float_calls += 1
            escape = self._after(name, args, kwargs, pre, out, grad_on, inf_on)
            if escape is not None and name == "__float__" and len(self.float_escapes) < 64:
                self.float_escapes.append((self.float_calls - 1, escape))
            if escape is not None and name in TAINTED_ESCAPES:
                out = taint(out, escape)  # followed through Python, back into torch
            elif escape is not None and name == "__float__" and isinstance(out, float) and \
                    math.isfinite(out) and not out.is_integer():
                self.escaped[out] = escape  # recognised by its value when it comes back
        except Exception as exc:  # noqa: BLE001 - counted and reported, the user's op ran
            self.failed(name, exc)
        return out

    def _after(self, name, args, kwargs, pre, out, grad_on, inf_on) -> BreakEvent | None:
        """One op's bookkeeping, in the order the cases are decided: a ``.data`` write, an
        escape from torch, a random draw, then any other op (:meth:`_op`). Returns the escape
        event of an op that leaves torch (None otherwise)."""
        if name == "data.__set__":
            self._data_set(args[0], args[1])
            return None
        if name in ESCAPE_OPS:
            return self._escape(name, pre)
        outs = tensors_in(out)
        inplace = bool(args) and isinstance(args[0], torch.Tensor) and (
            (name.endswith("_") and not name.endswith("__")) or name == "requires_grad.__set__")
        if inplace and all(o is not args[0] for o in outs):
            outs = [args[0], *outs]
        if not outs:
            return None
        if name in RANDOM_OPS and (name not in VALUE_RANDOM or not any(d for _, d, _, _ in pre)):
            self._draw(name, outs)  # (a draw around a z0-dependent mean follows it: below)
            return None
        self._op(name, args, kwargs, pre, outs, inplace, grad_on, inf_on)
        return None

    def _data_set(self, t: torch.Tensor, v: Any) -> None:
        """``t.data = v``: t takes v's dependence; on a value that requires grad, a bias."""
        m = self.get(t) or ValueFacts(dep=False, gconn=False, rg=t.requires_grad)
        if self.dep(v) and t.requires_grad:
            m.bias = self._event("bias", "data_write", ".data = ...")
        m.dep = m.dep or self.dep(v)
        self._set(t, m)

    def _escape(self, name: str, pre: list) -> BreakEvent | None:
        """A z0-dependent value leaving torch (.item(), .tolist(), .numpy(), a cast to a Python
        number): an escape event, or the cut it already carries renamed as the round trip."""
        if not (pre and pre[0][1]):
            return None
        _, _, g, m = pre[0]
        if m is not None and m.ev is not None and m.direct and \
                m.ev.cause in ("detach", "data_read"):
            m.ev.detail = f"{m.ev.op}() then .{name.strip('_')}()"
            m.ev.cause = ESCAPE_OPS[name]
            return m.ev
        if g:
            return self._event("escape", ESCAPE_OPS[name], name)
        return m.ev if m is not None else None

    def _draw(self, name: str, outs: list[torch.Tensor]) -> None:
        """A random draw: its outputs remember where it was drawn (fresh randomness)."""
        loc, fn = user_frame()
        step, _ = self._step()
        draw = {"op": name, "location": loc, "function": fn, "step": step, "reported": False,
                "via": caller_of_user_frame()}
        for o in outs:
            self._set(o, ValueFacts(dep=False, gconn=False, rg=o.requires_grad, rand=draw))

    def _op(self, name, args, kwargs, pre, outs, inplace, grad_on, inf_on) -> None:
        """Any other op: what its inputs bring (dependence, gradient, a cut, a bias, a draw) and
        what each output becomes."""
        if name in ONE_TO_ONE and len(outs) == len(pre) > 1:
            for one_in, one_out in zip(pre, outs):
                self._op(name, args, kwargs, [one_in], [one_out], False, grad_on, inf_on)
            return
        ins = Inputs.of(pre, name)
        if ins.any_dep:
            self._note_dtype(outs)
        if ins.any_dep and ins.draws and name in ADDITIVE:
            self._report_draws(ins.draws, name)
        if ins.any_dep and name in PRODUCTS:
            self._constant_zero(name, args, pre)
        back_in = self._coming_back(args, kwargs, pre)
        self._note_mixed_cuts(pre, ins.dep_gconn)
        if back_in and not ins.any_dep:  # made from them alone (torch.tensor(x.tolist())): a cut
            ins.any_dep = True
            ins.ev_in = ins.ev_in or back_in[0]
        step, last = self._step()
        if step is None and last + 1 < len(self.trace._entries):
            step = self.trace._entries[last + 1].step
        made_at = (name, user_frame()[0], step, last)
        in_ids = {id(t) for t, _, _, _ in pre}
        for o in outs:
            m = self._output(name, args, pre, o, ins, back_in, inplace, grad_on, inf_on)
            m.made_at = made_at
            self._set(o, m)
            # the node this op made (not one an input already had: x.to(same dtype) is x)
            if o.grad_fn is not None and id(o) not in in_ids and \
                    id(o.grad_fn) not in self.grad_fn_info:
                self.grad_fn_info[id(o.grad_fn)] = made_at
                self._keep.append(o.grad_fn)

    def _output(self, name, args, pre, o, ins, back_in, inplace, grad_on, inf_on) -> ValueFacts:
        """The facts of one output ``o`` of a non-random op."""
        g_o = bool(o.requires_grad and ins.any_gconn and name not in ZERO_GRAD_OPS
                   and name not in ("data.__get__",))
        m = ValueFacts(dep=ins.any_dep, gconn=g_o, rg=o.requires_grad, bias=ins.bias_in)
        if ins.any_dep and not g_o:
            if ins.dep_gconn:
                cause, detail = ("data_read", None) if name == "data.__get__" else \
                    self._cause(name, o, grad_on, inf_on)
                m.ev = self._event("hard", cause, "x.data" if name == "data.__get__" else name,
                                   detail)
                m.direct = True
            else:
                m.ev = ins.ev_in
                m.direct = ins.direct_in and name in COPY_OPS
        if back_in and g_o and not m.bias:  # mixed into a value that carries gradient
            esc = back_in[0]
            m.bias = self._event(
                "bias", esc.cause, name,
                f"a value computed from z0 left autograd by {esc.op}"
                + (f" at {esc.location}" if esc.location else "")
                + (f" (step {esc.step})" if esc.step is not None else "")
                + " and comes back here: autograd does not see that dependence, so "
                  "dL/dz0 misses its part")
        if inplace and o is args[0] and not grad_on and o.requires_grad and ins.any_dep:
            m.bias = m.bias or self._event("bias", "inplace_no_grad", name)
            m.gconn = pre[0][2] if pre else m.gconn
        if inplace and o is args[0]:
            self._write_through_data(o, name)
        if not ins.any_dep and ins.draws and not (name in PRODUCTS and zero_factor(args, pre)):
            m.rand = ins.draws[0]  # (a draw times an exact 0, as churn at S_churn = 0: none)
        if name == "data.__get__" and args and isinstance(args[0], torch.Tensor):
            m.data_of = weakref.ref(args[0])
        return m

    def _note_dtype(self, outs: list[torch.Tensor]) -> None:
        """The least precise float dtype computed from z0 so far."""
        for o in outs:
            if o.is_floating_point() and (
                    self.lowest_dtype is None
                    or torch.finfo(o.dtype).eps > torch.finfo(self.lowest_dtype).eps):
                self.lowest_dtype = o.dtype

    def _report_draws(self, draws: list[dict], name: str) -> None:
        """Fresh randomness entering a z0-dependent value additively: disconnected noise, each
        draw reported once."""
        for draw in draws:
            if draw["reported"]:
                continue
            draw["reported"] = True
            via = f" (in {draw['function']}, called from {draw['via']})" if draw["via"] else ""
            ev = self._event("randomness", "disconnected_randomness", draw["op"],
                             detail=f"drawn by {draw['op']} at {draw['location']}{via}, "
                                    f"added to the state by {name}",
                             location=(draw["location"], draw["function"]))
            ev.via = draw["via"]
            self.events.pop()
            ev.index = -1 - len(self.randomness)
            self.randomness.append(ev)

    def _coming_back(self, args: tuple, kwargs: dict, pre: list) -> list[BreakEvent]:
        """Values computed from z0 that left autograd, coming back: tainted floats, floats of an
        escaped value, and cut tensors of a Python/NumPy round trip, a .data read or an integer
        round trip (a bool mask is how healthy code uses a cast)."""
        back_in = tainted_in((args, kwargs))
        if self.escaped:
            back_in += [self.escaped[v] for v in plain_floats((args, kwargs))
                        if v in self.escaped]
        back_in += [m.ev for t, d, g, m in pre if d and not g and m is not None
                    and m.ev is not None and (m.ev.cause in MIXED_BIAS_CAUSES or (
                        m.ev.cause == "int_cast" and m.ev.detail != "to bool"
                        and t.is_floating_point()))]  # quantized and cast back: uint8 images
        return back_in

    def _note_mixed_cuts(self, pre: list, dep_gconn: bool) -> None:
        """A cut float value mixed back into one that carries gradient: a partial cut (the
        gradient misses the part through it); a bool or integer one is a mask or an index
        (torch.where's condition), which is how healthy code uses them."""
        if not dep_gconn:
            return
        for t, d, g, m in pre:
            if d and not g and m is not None and m.ev is not None and t.is_floating_point() \
                    and m.ev not in self.mixed_cuts and len(self.mixed_cuts) < 50:
                self.mixed_cuts.append(m.ev)

    def _constant_zero(self, name: str, args: tuple, pre: list) -> None:
        """A z0-dependent factor times a constant (a Python number, or a small tensor that does
        not depend on z0) that is exactly zero: remembered with its line and step."""
        consts = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        consts += [t for t, d, _, _ in pre if not d and t.numel() <= 64]
        zero = any((c == 0) if not isinstance(c, torch.Tensor) else bool((c == 0).all())
                   for c in consts)
        if zero and any(d and g for _, d, g, _ in pre) and len(self.constant_zeros) < 50:
            loc, fn = user_frame()
            step = self._step()[0]
            if all((e.location, e.step) != (loc, step) for e in self.constant_zeros):
                self.constant_zeros.append(BreakEvent(
                    kind="zero", cause="constant_zero", op=name, index=-100 - len(
                        self.constant_zeros), step=step, location=loc, function=fn))

    def _write_through_data(self, t: torch.Tensor, op: str) -> None:
        """An in-place ``op`` on ``t`` that is ``x.data`` of a z0-dependent ``x`` (``x.data.mul_(0.9)``,
        ``x.data.clamp_(...)``): x's value changes where autograd does not see it."""
        m = self.get(t)
        x = m.data_of() if m is not None and m.data_of is not None else None
        mx = self.get(x) if x is not None else None
        if mx is not None and mx.dep and x.requires_grad:
            mx.bias = mx.bias or self._event(
                "bias", "data_write", f"x.data.{op}",
                detail="an in-place write through .data changes a value autograd recorded "
                       "without telling it: the gradient flows, through the old value")
