"""The break locator: where, and why, the gradient path from the loss to z0 breaks.

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
event explains a failing check is decided by ancestry: the event carried by the loss, the output, or
the first probe that lost its gradient. "Exactly zero" and "non-finite" are found in a backward pass
with node hooks: the first node (from the loss) whose incoming gradient is non-zero (finite) but
whose outgoing gradient towards z0 is all zero (non-finite).

It runs only when a diagnosis found a problem (or when asked), so healthy runs pay nothing.
"""
from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import graph
from .probes import Trace, probe, trace
from .records import BreakEvent, FlowReport, LocatorResult, PATH_KINDS

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: gradcheck's built-in sampler is sampler code like any user's: its frames are reported
_SAMPLER_DIR = os.path.join(_OWN_DIR, "sampling") + os.sep
_SKIP_FILES = ("contextlib.py", "functools.py")

#: Ops whose gradient is zero almost everywhere: they cut the gradient while keeping requires_grad.
ZERO_GRAD_OPS = {"round", "round_", "floor", "floor_", "ceil", "ceil_", "sign", "sign_", "trunc",
                 "trunc_", "fix", "fix_", "sgn", "heaviside"}
NONDIFF_OPS = ZERO_GRAD_OPS | {
    "argmax", "argmin", "argsort", "gt", "lt", "ge", "le", "eq", "ne", "greater", "less",
    "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "isclose", "isnan", "isinf",
    "isfinite", "logical_and", "logical_or", "logical_not", "bucketize", "searchsorted",
}
CAST_OPS = {"to", "type", "int", "long", "short", "byte", "char", "bool", "type_as"}
ESCAPE_OPS = {"item": "python_roundtrip", "tolist": "python_roundtrip",
              "__int__": "python_roundtrip", "__float__": "python_roundtrip",
              "__index__": "python_roundtrip", "__bool__": "python_roundtrip",
              "numpy": "numpy_roundtrip", "__array__": "numpy_roundtrip"}
RANDOM_OPS = {"randn", "randn_like", "rand", "rand_like", "randint", "randint_like", "normal",
              "normal_", "uniform_", "bernoulli", "bernoulli_", "multinomial", "poisson",
              "exponential_", "geometric_", "log_normal_", "cauchy_", "random_", "randperm"}
#: Ops whose output values do not depend on their inputs' values (only on shape/dtype).
VALUE_FREE = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones",
              "new_empty", "new_full", "size", "dim", "numel", "__len__"} | RANDOM_OPS
ADDITIVE = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__",
            "__rsub__", "__isub__", "addcmul", "addcmul_", "lerp", "lerp_"}
#: Ops whose second tensor argument gives only a shape or dtype, not values.
SHAPE_ONLY = {"view_as", "expand_as", "reshape_as", "type_as"}
#: Copies/moves: an escape right after one of these upgrades the cause of the cut before it.
COPY_OPS = {"cpu", "cuda", "to", "contiguous", "clone", "float", "double"}


def _name(func: Any) -> str:
    owner = getattr(func, "__self__", None)
    n = getattr(func, "__name__", None) or str(func)
    if n in ("__get__", "__set__") and owner is not None and hasattr(owner, "__name__"):
        return f"{owner.__name__}.{n}"  # a property: 'data.__get__', 'requires_grad.__set__'
    return n


def _is_user(filename: str) -> bool:
    """A frame of the user's code: not torch, not gradcheck's own machinery (its built-in
    sampler counts as sampler code), not contextlib/functools plumbing."""
    own = filename.startswith(_OWN_DIR) and not filename.startswith(_SAMPLER_DIR)
    return not (filename.startswith(_TORCH_DIR) or own or filename.endswith(_SKIP_FILES)
                or filename.startswith("<frozen"))


def _rel(filename: str) -> str:
    return os.path.relpath(filename) if not filename.startswith("<") else filename


def _first_user_frame(f: Any) -> Any:
    while f is not None and not _is_user(f.f_code.co_filename):
        f = f.f_back
    return f


def user_frame() -> tuple[str | None, str | None]:
    """(``path:line``, function) of the first stack frame outside torch and gradcheck's own
    machinery (its built-in sampler counts as sampler code)."""
    f = _first_user_frame(sys._getframe(1))
    if f is None:
        return None, None
    return f"{_rel(f.f_code.co_filename)}:{f.f_lineno}", f.f_code.co_name


def caller_of_user_frame() -> str | None:
    """``path:line (function)`` of the frame that called the first user frame, if it is also
    outside torch and gradcheck: where a library helper such as diffusers' ``randn_tensor`` was
    called from."""
    f = _first_user_frame(sys._getframe(1))
    caller = f.f_back if f is not None else None
    if caller is None or not _is_user(caller.f_code.co_filename):
        return None
    return f"{_rel(caller.f_code.co_filename)}:{caller.f_lineno} ({caller.f_code.co_name})"


def _decorated(kind: type) -> str | None:
    """The innermost function on the stack wrapped by a ``@kind()`` decorator (no_grad, ...)."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "decorate_context" and f.f_code.co_filename.endswith("_contextlib.py"):
            ctx = getattr(f.f_locals.get("ctx_factory"), "__self__", None)
            fn = f.f_locals.get("func")
            if isinstance(ctx, kind) and fn is not None:
                code = getattr(fn, "__code__", None)
                where = (f" (defined at {os.path.relpath(code.co_filename)}:{code.co_firstlineno})"
                         if code else "")
                return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}{where}"
        f = f.f_back
    return None


def _in_reentrant_checkpoint() -> bool:
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename.endswith(os.path.join("utils", "checkpoint.py")) and \
                f.f_code.co_name == "forward":
            return True
        f = f.f_back
    return False


@dataclass
class _Meta:
    dep: bool
    gconn: bool
    rg: bool
    ev: BreakEvent | None = None
    bias: BreakEvent | None = None
    rand: dict | None = None
    direct: bool = False  # the output of the op that recorded ``ev`` (or a plain copy of it)
    made_at: tuple | None = None  # (op, path:line, step, probe index) where the value was made


#: torch.distributed's collectives (not autograd-aware): which positional argument they write
#: into, and which they read from (None: the same as written)
COLLECTIVES = {
    "all_reduce": (0, None), "broadcast": (0, None), "reduce": (0, None),
    "all_gather": (0, 1), "all_gather_into_tensor": (0, 1), "gather": (1, 0),
    "scatter": (0, 1), "reduce_scatter": (0, 1), "reduce_scatter_tensor": (0, 1),
    "all_to_all": (0, 1), "all_to_all_single": (0, 1), "recv": (0, None), "irecv": (0, None),
    "send": (None, 0), "isend": (None, 0),
}


class _Collectives:
    """While the provenance pass runs, wraps torch.distributed's collectives: one applied to a
    value that carries z0's gradient is a cut (autograd does not see it), named with the user's
    file:line; what it writes inherits the cut (or the earlier one it carried)."""

    def __init__(self, prov: Provenance) -> None:
        self.prov = prov
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> _Collectives:
        import torch.distributed as dist

        if not dist.is_available():
            return self
        for name, (out_pos, in_pos) in COLLECTIVES.items():
            fn = getattr(dist, name, None)
            if fn is not None:
                self.saved[name] = fn
                setattr(dist, name, self._wrap(name, fn, out_pos, in_pos))
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        for name, fn in self.saved.items():
            setattr(dist, name, fn)

    def _wrap(self, name: str, fn: Callable[..., Any], out_pos: int | None,
              in_pos: int | None) -> Callable[..., Any]:
        prov = self.prov

        def tensors(x: Any) -> list[torch.Tensor]:
            return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            pos = in_pos if in_pos is not None else out_pos
            src = tensors(args[pos]) if pos is not None and len(args) > pos else []
            dep = [t for t in src if (m := prov.get(t)) is not None and m.dep]
            ev = None
            if any(prov.gconn(t) for t in dep):
                ev = prov._event("hard", "non_autograd_collective", f"torch.distributed.{name}",
                                 detail="its result carries no gradient back to z0")
            elif dep:  # already cut before: the result carries that cut on
                ev = next((m.ev for t in dep if (m := prov.get(t)) and m.ev is not None), None)
            res = fn(*args, **kwargs)
            if dep and out_pos is not None and len(args) > out_pos:
                for t in tensors(args[out_pos]):
                    prov._set(t, _Meta(dep=True, gconn=False, rg=t.requires_grad, ev=ev))
            return res

        wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapped


class Provenance(TorchFunctionMode):
    """Follows z0-dependence and gradient connection through every torch call (see module doc)."""

    def __init__(self, tr: Trace, roots: list[torch.Tensor]) -> None:
        super().__init__()
        self.trace = tr
        self.roots = list(roots)
        self.meta: dict[int, tuple[weakref.ref, _Meta]] = {}
        self.events: list[BreakEvent] = []
        self.randomness: list[BreakEvent] = []
        #: the least precise floating dtype of any value computed from z0 (a sampler that casts
        #: down inside, e.g. a scheduler's float32 step, computes at that precision)
        self.lowest_dtype: torch.dtype | None = None
        self.grad_fn_info: dict[int, tuple[str, str | None, int | None]] = {}
        self._keep: list[Any] = []
        self.probe_meta: dict[int, _Meta] = {}
        for r in self.roots:
            self._set(r, _Meta(dep=True, gconn=r.requires_grad, rg=r.requires_grad))

    # -- bookkeeping ----------------------------------------------------------------------
    def _set(self, t: torch.Tensor, m: _Meta) -> None:
        self.meta[id(t)] = (weakref.ref(t), m)

    def get(self, t: torch.Tensor) -> _Meta | None:
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
        ev._probe_before = last  # type: ignore[attr-defined]  resolved to names after the run
        self.events.append(ev)
        return ev

    def observe(self, index: int, t: torch.Tensor) -> None:
        """Trace observer: remember each probed tensor's state when it is probed."""
        m = self.get(t)
        if m is None:  # a tensor no tracked op produced (e.g. torch.from_numpy): it is fresh
            self.probe_meta[index] = _Meta(dep=False, gconn=False, rg=t.requires_grad)
        else:
            self.probe_meta[index] = _Meta(dep=m.dep, gconn=self.gconn(t), rg=m.rg, ev=m.ev,
                                           bias=m.bias)

    # -- classification -------------------------------------------------------------------
    def _cause(self, name: str, out: torch.Tensor, grad_on: bool, inf_on: bool) -> tuple[str, str | None]:
        if inf_on:
            fn = _decorated(torch.inference_mode)
            return "inference_mode", (f"inside {fn}, decorated with @torch.inference_mode()"
                                      if fn else None)
        if not grad_on:
            if _in_reentrant_checkpoint():
                return "reentrant_checkpoint", ("torch.utils.checkpoint(use_reentrant=True) runs "
                                                "its function under no_grad when no input "
                                                "requires grad; pass the z0-dependent tensor as "
                                                "an input, or use use_reentrant=False")
            fn = _decorated(torch.no_grad)
            if fn:
                return "decorated_no_grad", f"function {fn}"
            return "no_grad", None
        if name in ("detach", "detach_"):
            return "detach", None
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
        flat = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if name in SHAPE_ONLY:
            flat = flat[:1]
        pre = [(t, self.dep(t), self.gconn(t), self.get(t)) for t in flat]
        grad_on, inf_on = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        out = func(*args, **kwargs)
        try:
            self._after(name, args, pre, out, grad_on, inf_on)
        except Exception:  # noqa: BLE001 - the locator must never break the user's code
            pass
        return out

    def _after(self, name, args, pre, out, grad_on, inf_on) -> None:
        base = name
        if name == "data.__set__":
            t, v = args[0], args[1]
            m = self.get(t) or _Meta(dep=False, gconn=False, rg=t.requires_grad)
            if self.dep(v) and t.requires_grad:
                m.bias = self._event("bias", "data_write", ".data = ...")
            m.dep = m.dep or self.dep(v)
            self._set(t, m)
            return
        if name in ESCAPE_OPS:
            if pre and pre[0][1]:
                t, _, g, m = pre[0]
                if m is not None and m.ev is not None and m.direct and \
                        m.ev.cause in ("detach", "data_read"):
                    m.ev.detail = f"{m.ev.op}() then .{name.strip('_')}()"
                    m.ev.cause = ESCAPE_OPS[name]
                elif g:
                    self._event("escape", ESCAPE_OPS[name], name)
            return
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        inplace = bool(args) and isinstance(args[0], torch.Tensor) and (
            (name.endswith("_") and not name.endswith("__")) or name == "requires_grad.__set__")
        if inplace and all(o is not args[0] for o in outs):
            outs = [args[0], *outs]
        if not outs:
            return
        if name in RANDOM_OPS:
            loc, fn = user_frame()
            step, _ = self._step()
            draw = {"op": name, "location": loc, "function": fn, "step": step, "reported": False,
                    "via": caller_of_user_frame()}
            for o in outs:
                self._set(o, _Meta(dep=False, gconn=False, rg=o.requires_grad, rand=draw))
            return
        any_dep = any(d for _, d, _, _ in pre) and name not in VALUE_FREE
        if any_dep:
            for o in outs:
                if o.is_floating_point() and (
                        self.lowest_dtype is None
                        or torch.finfo(o.dtype).eps > torch.finfo(self.lowest_dtype).eps):
                    self.lowest_dtype = o.dtype
        dep_gconn = any(d and g for _, d, g, _ in pre)
        any_gconn = any(g for _, _, g, _ in pre)
        evs = [m.ev for _, d, g, m in pre if d and not g and m is not None and m.ev is not None]
        ev_in = min(evs, key=lambda e: e.index) if evs else None
        biases = [m.bias for _, _, _, m in pre if m is not None and m.bias is not None]
        bias_in = min(biases, key=lambda e: e.index) if biases else None
        direct_in = any(m.direct for _, d, g, m in pre if m is not None and m.ev is ev_in) \
            if ev_in is not None else False
        draws = [m.rand for _, d, _, m in pre if not d and m is not None and m.rand is not None]
        # fresh randomness entering a z0-dependent value additively: disconnected noise
        if any_dep and draws and name in ADDITIVE:
            for draw in draws:
                if not draw["reported"]:
                    draw["reported"] = True
                    via = f" (in {draw['function']}, called from {draw['via']})" \
                        if draw["via"] else ""
                    ev = self._event("randomness", "disconnected_randomness", draw["op"],
                                     detail=f"drawn by {draw['op']} at {draw['location']}{via}, "
                                            f"added to the state by {name}",
                                     location=(draw["location"], draw["function"]))
                    ev.via = draw["via"]
                    self.events.pop()
                    ev.index = -1 - len(self.randomness)
                    self.randomness.append(ev)
        step, last = self._step()
        if step is None and last + 1 < len(self.trace._entries):
            step = self.trace._entries[last + 1].step
        loc = user_frame()[0]
        in_ids = {id(t) for t, _, _, _ in pre}
        for o in outs:
            g_o = bool(o.requires_grad and any_gconn and base not in ZERO_GRAD_OPS
                       and name not in ("data.__get__",))
            m = _Meta(dep=any_dep, gconn=g_o, rg=o.requires_grad, bias=bias_in)
            if any_dep and not g_o:
                if dep_gconn:
                    if name == "data.__get__":
                        cause, detail = "data_read", None
                    else:
                        cause, detail = self._cause(base, o, grad_on, inf_on)
                    m.ev = self._event("hard", cause, "x.data" if name == "data.__get__" else base,
                                       detail)
                    m.direct = True
                else:
                    m.ev = ev_in
                    m.direct = direct_in and base in COPY_OPS
            if inplace and o is args[0] and not grad_on and o.requires_grad and any_dep:
                m.bias = m.bias or self._event("bias", "inplace_no_grad", base)
                m.gconn = pre[0][2] if pre else m.gconn
            if not any_dep and draws:
                m.rand = draws[0]
            m.made_at = (base, loc, step, last)
            self._set(o, m)
            # the node this op made (not one an input already had: x.to(same dtype) is x)
            if o.grad_fn is not None and id(o) not in in_ids and \
                    id(o.grad_fn) not in self.grad_fn_info:
                self.grad_fn_info[id(o.grad_fn)] = (base, loc, step, last)
                self._keep.append(o.grad_fn)


def _resolve_probes(events: list[BreakEvent], tr: Trace) -> None:
    entries = tr._entries
    for ev in events:
        i = getattr(ev, "_probe_before", None)
        if i is None:
            continue
        if 0 <= i < len(entries):
            ev.before, ev.before_kind = entries[i].name, entries[i].kind
        if i + 1 < len(entries):
            ev.after, ev.after_kind = entries[i + 1].name, entries[i + 1].kind
            if ev.step is None:  # before the first stepped probe: it belongs to the next one
                ev.step = entries[i + 1].step


def _backward_analysis(loss: torch.Tensor, z: torch.Tensor, info: dict, want: set[str],
                       tr: Trace) -> list[BreakEvent]:
    """Node hooks over one backward pass: the first node (in execution order from the loss) on a
    path to z0 whose incoming gradient is non-zero but whose gradient towards z0 is exactly zero
    (``zero``), or finite but whose gradient towards z0 is not (``nonfinite``)."""
    nodes = list(graph.iter_nodes([loss.grad_fn]))
    # reach[n]: the node leads to z0's AccumulateGrad (iterative post-order)
    reach: dict[int, bool] = {}
    for n in reversed(_topo(nodes)):
        reach[id(n)] = getattr(n, "variable", None) is z or any(
            reach.get(id(c), False) for c, _ in n.next_functions if c is not None)
    found: dict[str, tuple[int, Any]] = {}
    counter = [0]
    handles = []

    def make_hook(node):
        def hook(grad_inputs, grad_outputs):
            counter[0] += 1
            toward = [g for g, (c, _) in zip(grad_inputs, node.next_functions)
                      if c is not None and reach.get(id(c), False) and g is not None]
            gout = [g for g in grad_outputs if g is not None]
            if not gout:
                return None
            with torch.no_grad():
                out_finite = all(bool(torch.isfinite(g).all()) for g in gout)
                out_nonzero = any(bool((g != 0).any()) for g in gout)
                if "zero" in want and "zero" not in found and out_nonzero and out_finite:
                    if all(not bool((g != 0).any()) for g in toward):
                        found["zero"] = (counter[0], node)
                if "nonfinite" in want and "nonfinite" not in found and out_finite and toward:
                    if any(not bool(torch.isfinite(g).all()) for g in toward):
                        found["nonfinite"] = (counter[0], node)
            return None
        return hook

    for n in nodes:
        if reach.get(id(n)) and getattr(n, "variable", None) is None:
            handles.append(n.register_hook(make_hook(n)))
    try:
        leaves = [v for v in (getattr(n, "variable", None) for n in nodes)
                  if isinstance(v, torch.Tensor) and v.requires_grad]
        if leaves:
            torch.autograd.grad(loss, leaves, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    out = []
    for kind, (_, node) in sorted(found.items(), key=lambda kv: kv[1][0]):
        fwd, loc, step, last = info.get(id(node), (None, None, None, -1))
        if step is None:  # recorded before the first stepped probe: it belongs to the next one
            step = next((e.step for e in tr._entries[last + 1:] if e.step is not None), None)
        node_name = type(node).__name__
        cause = "zero_grad_op" if kind == "zero" else "nonfinite_backward"
        detail = ("it receives a non-zero gradient and passes exactly zero towards z0 (a "
                  "saturated clamp, a masked-out branch, ...)" if kind == "zero" else
                  "it receives a finite gradient and passes NaN/Inf towards z0")
        op = f"{fwd} ({node_name})" if fwd and not node_name.lower().startswith(fwd.lower()) \
            else (fwd or node_name)
        out.append(BreakEvent(kind=kind, cause=cause, op=op, index=10_000 + len(out), step=step,
                              location=loc, detail=detail))
    return out


def _topo(nodes: list[Any]) -> list[Any]:
    """Nodes in an order where each node comes before its next_functions (inputs)."""
    ids = {id(n) for n in nodes}
    indeg: dict[int, int] = {id(n): 0 for n in nodes}
    for n in nodes:
        for c, _ in n.next_functions:
            if c is not None and id(c) in ids:
                indeg[id(c)] += 1
    ready = [n for n in nodes if indeg[id(n)] == 0]
    order = []
    while ready:
        n = ready.pop()
        order.append(n)
        for c, _ in n.next_functions:
            if c is not None and id(c) in ids:
                indeg[id(c)] -= 1
                if indeg[id(c)] == 0:
                    ready.append(c)
    return order


def symptoms(report: FlowReport) -> list[str]:
    """Why a report calls for the locator (empty: it does not)."""
    out = []
    z = next((p for p in report.probes if p.kind == "z0"), None)
    if not report.output_requires_grad or not report.loss_requires_grad:
        out.append("the output/loss is not in the autograd graph")
    if z is not None and z.status != "ok":
        out.append(f"z0 gradient is {z.status}")
    bad = [p for p in report.probes if p.kind in PATH_KINDS + ("step_noise",)
           and p.status != "ok" and not (p.kind == "step_noise" and not p.requires_grad
                                         and report.expect.get("step_noise") != "connected")]
    if bad:
        out.append(f"{len(bad)} probe(s) without a usable gradient")
    if _numeric_failed(report):
        out.append("reverse mode disagrees with finite differences")
    return out


def _numeric_failed(report: FlowReport) -> bool:
    """The numeric check's own verdict (its tolerance lives in checks.numeric_directional)."""
    return any(f.name == "numeric_directional" and f.level == "error" and not f.passed
               for f in report.checks)


def locate(sample_fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor,
           loss_of: Callable[[torch.Tensor], torch.Tensor], report: FlowReport, *,
           run_ctx: Callable[[], Any], reason: str) -> LocatorResult:
    """Re-run ``sample_fn`` under provenance tracking and explain ``report``'s failures.

    Args:
        sample_fn: the sampler, ``z0 -> output``.
        z0: the point to re-run at (a fresh leaf copy is made).
        loss_of: ``output -> loss``, as in the diagnosis.
        report: the diagnosis to explain (its probe statuses select what to look for).
        run_ctx: a context-manager factory reproducing the diagnosis's RNG state per call.
        reason: why the locator runs (recorded).
    """
    z = z0.detach().clone().requires_grad_(True)
    grad_mode = torch.is_grad_enabled()
    loss = out = None
    with trace() as tr:
        prov = Provenance(tr, [z])
        tr.observer = prov.observe
        probe(z, "z0", kind="z0")
        try:
            with run_ctx(), prov, _Collectives(prov):
                out = sample_fn(z)
                torch.set_grad_enabled(grad_mode)
                if isinstance(out, torch.Tensor):
                    probe(out, "output", kind="output")
                    loss = loss_of(out)
                    probe(loss, "loss", kind="loss")
        finally:
            torch.set_grad_enabled(grad_mode)
        out_meta = prov.get(loss) if isinstance(loss, torch.Tensor) else None
        want = set()
        statuses = {p.status for p in report.probes if p.kind in ("z0",) + PATH_KINDS}
        if "zero" in statuses:
            want.add("zero")
        if "nonfinite" in statuses or any(p.nonfinite for p in report.probes):
            want.add("nonfinite")
        back: list[BreakEvent] = []
        if want and isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
            back = _backward_analysis(loss, z, prov.grad_fn_info, want, tr)
    _resolve_probes(prov.events + prov.randomness, tr)
    primary: BreakEvent | None = None
    note = None
    # 1. the loss itself does not carry gradient to z0: its own cut
    if out_meta is not None and out_meta.dep and not prov.gconn(loss) and out_meta.ev is not None:
        primary = out_meta.ev
        # the same cut repeated in every step (a detach or collective in each denoiser call):
        # name its first occurrence, where the gradient first stops
        primary = next((e for e in prov.events if (e.kind, e.cause, e.op, e.location) ==
                        (primary.kind, primary.cause, primary.op, primary.location)), primary)
    elif isinstance(loss, torch.Tensor) and not prov.gconn(loss):
        escapes = [e for e in prov.events if e.kind == "escape"]
        hard = [e for e in prov.events if e.kind == "hard"]
        primary = (escapes or hard or [None])[0]
        if primary is None:
            note = "the loss does not depend on z0 as far as torch can see"
    # 2. the first probe (forward order) that depends on z0 but lost its gradient
    if primary is None:
        for i in sorted(prov.probe_meta):
            m = prov.probe_meta[i]
            if m.dep and not m.gconn and m.ev is not None:
                primary = m.ev
                break
    # 2b. a path value that no longer depends on z0 at all as far as torch can see (it went
    #     through NumPy or Python and came back as a fresh tensor): the last cut before it
    if primary is None:
        seen_dep = False
        for i in sorted(prov.probe_meta):
            e = tr._entries[i]
            m = prov.probe_meta[i]
            if e.kind not in PATH_KINDS + ("z0", "step_noise"):
                continue
            if m.dep:
                seen_dep = True
            elif seen_dep and not m.gconn:
                before = [ev for ev in prov.events if ev.kind in ("hard", "escape")
                          and getattr(ev, "_probe_before", -1) < i]
                if before:
                    primary = before[-1]
                break
    # 3./4. exactly zero, non-finite (backward)
    if primary is None and back:
        primary = back[0]
    # 5. a wrong gradient: bypassed writes, then values that escaped through Python
    if primary is None and _numeric_failed(report):
        bias = out_meta.bias if out_meta is not None else None
        escapes = [e for e in prov.events if e.kind == "escape"]
        primary = bias or (escapes[0] if escapes else None)
        if primary is None:
            note = ("no forward-side cause found: the forward pass keeps the gradient path, so a "
                    "custom autograd.Function backward (or a non-deterministic forward) is the "
                    "likely cause")
    # 6. learnable step noise that is not derived from z0
    if primary is None and prov.randomness and report.expect.get("step_noise") == "connected":
        primary = prov.randomness[0]
    relevant = {id(e) for e in [primary] if e is not None}
    relevant |= {id(m.ev) for m in prov.probe_meta.values() if m.ev is not None}
    relevant |= {id(m.bias) for m in prov.probe_meta.values() if m.bias is not None}
    events = [e for e in prov.events + back if id(e) in relevant or e.kind in ("escape",)]
    low = prov.lowest_dtype
    return LocatorResult(ran=True, reason=reason, primary=primary, events=events[:50],
                         randomness=prov.randomness[:50], note=note,
                         lowest_dtype=str(low).replace("torch.", "") if low is not None else None)
