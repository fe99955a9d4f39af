"""Tracing: tag tensors with :func:`probe`, record statistics of the gradient that reaches them.

    with gradcheck.trace() as tr:
        x = gradcheck.probe(x, "x[3]", step=3, kind="state")
        ...
        loss.backward()
    tr.stats   # list[ProbeStats], plain data

Hooks only record detached 0-d statistics (L2 norm, mean |g|, max |g|, non-finite count); no
gradient tensor is kept and no hook synchronises with the device: the statistics are materialised
once, when the trace closes. Every hook is removed and the grad mode restored on exit, also when
the code inside raises. The active trace lives in a ContextVar (like autocast state), never in a
module-level tensor global.
"""
from __future__ import annotations

import math
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import graph
from . import gradstats
from .gradstats import HELD_DTYPES, CaptureBudget, HeldGrads, grad_stats
from .records import ProbeStats
from .torch_internals import hook_registered, in_backward

#: torch dtype -> its name without "torch." (a probe's dtype field)
_DTYPE_NAMES: dict[torch.dtype, str] = {}

_ACTIVE: ContextVar[Trace | None] = ContextVar("gradcheck_active_trace", default=None)


def current_trace() -> Trace | None:
    """The innermost active trace, or None."""
    return _ACTIVE.get()


class ObservingHook:
    """A gradient hook of gradcheck's own that only reads the gradient (returns None): a
    probed value that has only such hooks can have its gradient captured (:class:`Trace`)."""

    __slots__ = ()


@dataclass(slots=True, eq=False)
class _Entry:
    """One probe of a trace; also the hook on its tensor (``__call__``): a probe allocates as few
    objects as it can, since every one that lives until the trace closes counts towards the
    cyclic collector's next young collection."""
    name: str
    kind: str
    order: int
    step: int | None
    call: int | None
    sigma: Any
    dtype: str
    shape: tuple[int, ...]
    requires_grad: bool
    grad_fn: str | None
    connected_to_z0: bool | None
    numel: int = 0
    stats: torch.Tensor | None = None  # [norm, sum|g|, max|g|, finite count] (see gradstats.grad_stats)
    fired: int = 0
    ref: Any = None  # the grad_fn (or the leaf tensor) while the trace is open, for graph capture
    output_nr: int = 0  # which of ref's outputs the probed value is (its gradient edge)
    held: HeldGrads | None = None  # the trace's held small gradients
    captured: bool = False  # no hook: its gradient edge is differentiated (Trace(capture=True))

    def __call__(self, g: torch.Tensor) -> None:
        """The tensor hook: hold a small gradient for the batched summary at trace close, or
        summarise it now."""
        if self.held is not None and self.held.take(self.order, g):
            self.stats = None
        else:
            self.stats = grad_stats(g)
        self.fired += 1


@dataclass
class BackwardPlan:
    """What a record's backward pass differentiates (see :meth:`Trace.backward_plan`)."""

    cut: list[int]  # the probes (order) just above a cut, differentiated as well
    needed: set[int]  # probes (order) whose node lies on a differentiated path
    reached: set[int]  # probes (order) the loss's graph reaches


class Trace:
    """A recording context. Use :func:`trace` to make one.

    With ``capture=True`` the caller differentiates the probes itself: small probed values get
    no hook; their gradient edges (:meth:`capture_edges`) are given to the caller's
    ``torch.autograd.grad`` as inputs, and the gradients it returns are handed back with
    :meth:`deliver`. The engine then hands those gradients over together at the end: no
    ``register_hook`` in the forward and no Python hook call during the backward. Larger values
    (whose captured gradients would hold memory the backward could reuse), leaves, values of
    tensor subclasses and values with a gradient hook of the user's keep their hooks."""

    def __init__(self, capture: bool = False) -> None:
        self._entries: list[_Entry] = []
        self._handles: list[Any] = []
        self._capture = capture
        self._captured: list[_Entry] = []
        self._budget = CaptureBudget(gradstats.DEFER_NUMEL, gradstats.DEFER_BYTES)
        self._owners: list[list[_Entry]] = []
        self._seen: dict[str, weakref.ref] = {}
        self._calls = 0
        self._held = HeldGrads()
        self._token = None
        self._grad_mode_before = True
        self.z0: torch.Tensor | None = None
        self.stats: list[ProbeStats] = []
        self.hooks_left: int | None = None
        self.grad_mode_after: bool | None = None
        self.observer: Callable[[int, torch.Tensor], None] | None = None
        # (order, tensor) -> the tensor the sampler goes on with: the locator's numeric
        # localisation perturbs one probed value (see gradcheck.locate.bisect); None otherwise
        self.perturber: Callable[[int, torch.Tensor], torch.Tensor] | None = None

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> Trace:
        self._grad_mode_before = torch.is_grad_enabled()
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            for h in self._handles:
                h.remove()
            self.hooks_left = sum(1 for h in self._handles if hook_registered(h))
        finally:
            _ACTIVE.reset(self._token)
            torch.set_grad_enabled(self._grad_mode_before)
            self.grad_mode_after = torch.is_grad_enabled()
            self.stats = self._materialise()
            self.z0 = None  # drop the references to the user's tensors and graph
            for e in self._entries:
                e.ref = e.held = e.sigma = None
            self._owners = []
        return False

    @property
    def hooks_registered(self) -> int:
        return len(self._handles)

    @property
    def grad_mode_before(self) -> bool:
        return self._grad_mode_before

    def next_call(self) -> int:
        """A fresh denoiser-call index (0, 1, 2, ... within this trace)."""
        n = self._calls
        self._calls += 1
        return n

    # -- recording ----------------------------------------------------------------------
    def add(self, t: torch.Tensor, name: str, *, step: int | None, kind: str | None,
            sigma: Any = None, call: int | None = None) -> torch.Tensor:
        kind = kind or "custom"
        key = f"{id(t)} {name}"  # a str: not tracked by the cyclic collector, unlike a tuple
        ref = self._seen.get(key)
        if ref is not None and ref() is t:
            return t
        if kind == "z0" and self.z0 is None:
            self.z0 = t
        connected: bool | None = None
        if kind in ("step_noise", "x_T") and self.z0 is not None:
            connected = graph.is_connected(t, self.z0)
        elif kind == "z0":
            connected = True
        rg = t.requires_grad
        fn = t.grad_fn
        dtype = _DTYPE_NAMES.get(t.dtype)
        if dtype is None:
            dtype = _DTYPE_NAMES[t.dtype] = str(t.dtype).replace("torch.", "")
        entry = _Entry(
            name=str(name), kind=kind, order=len(self._entries), step=step, call=call,
            sigma=sigma,  # a tensor's first element is read at trace close, with the others
            dtype=dtype, shape=tuple(t.shape), requires_grad=bool(rg),
            grad_fn=type(fn).__name__ if fn is not None else None,
            connected_to_z0=connected, numel=t.numel(),
            ref=(fn if fn is not None else t) if rg else None,
            output_nr=t.output_nr if fn is not None else 0,
            held=self._held,
        )
        self._entries.append(entry)
        self._seen[key] = weakref.ref(t)
        if self.observer is not None:
            self.observer(entry.order, t)
        if rg:
            if self._capture and fn is not None and self._capturable(t):
                entry.captured = True
                self._captured.append(entry)
            else:
                self._handles.append(t.register_hook(entry))
        if self.perturber is not None:
            return self.perturber(entry.order, t)
        return t

    def _capturable(self, t: torch.Tensor) -> bool:
        """A value whose gradient :class:`HeldGrads` would hold: captured instead of hooked.
        Not one with tensor hooks of its own (a hook that rescales the gradient): autograd
        captures an edge's gradient before the hooks run, while a probe's hook, registered after
        them, records the gradient they pass on (what the backward carries below)."""
        if t.dtype not in HELD_DTYPES:
            return False
        hooks = t._backward_hooks  # the op detail's own hooks only read (ObservingHook)
        if hooks and not all(isinstance(h, ObservingHook) for h in hooks.values()):
            return False
        return self._budget.take(t)

    def capture_edges(self, extra: list[int] = ()) -> list[Any]:
        """The gradient edges to differentiate for the captured probes and for the probes
        ``extra`` (by order: :meth:`backward_plan`'s cut), each once; the gradients
        ``torch.autograd.grad`` returns for them go to :meth:`deliver`, in this order."""
        from torch.autograd.graph import GradientEdge

        self._capture = False  # values probed from now on (a recomputation inside the
        # backward: a reentrant checkpoint's) are hooked: their edges come too late
        slots: dict[tuple[int, int], int] = {}
        edges: list[Any] = []
        owners: list[list[_Entry]] = []
        entries = self._entries
        for e in [*self._captured, *(entries[i] for i in extra)]:
            k = (id(e.ref), e.output_nr)
            j = slots.get(k)
            if j is None:
                j = slots[k] = len(edges)
                edges.append(GradientEdge(e.ref, e.output_nr))
                owners.append([])
            if e.captured and e not in owners[j]:  # a hooked probe's hook records it
                owners[j].append(e)
        self._owners = owners
        return edges

    def deliver(self, grads: list[torch.Tensor | None]) -> None:
        """The gradients of :meth:`capture_edges`' edges: recorded like a hook would have."""
        for owners, g in zip(self._owners, grads):
            if g is not None:
                for e in owners:
                    e(g)
        self._owners = []

    def collapse(self, root: torch.Tensor | None):
        """Walk the recorded autograd graph once, from the loss ``root`` and from every probe:
        the leaf tensors the loss reaches, its node count, and the graph collapsed onto this
        trace's probes (see :func:`gradcheck.graph.collapse`; probe index = order)."""
        node_probes: dict[int, list[int]] = {}
        leaf_probes: dict[int, list[int]] = {}
        extra = []
        for i, e in enumerate(self._entries):
            if e.ref is None:
                continue
            if isinstance(e.ref, torch.Tensor):
                leaf_probes.setdefault(id(e.ref), []).append(i)
            else:
                node_probes.setdefault(id(e.ref), []).append(i)
                extra.append(e.ref)
        return graph.collapse(root, node_probes, leaf_probes, extra)

    def backward_plan(self, edges: list[list[int]], inputs: list[torch.Tensor]) -> BackwardPlan:
        """What the backward pass differentiates besides ``inputs``, so that every probe the loss
        reaches gets its gradient: autograd computes only the nodes on a path from the loss to an
        input (z0, a step-noise leaf), so a cut between the loss and z0 (a ``.detach()``
        mid-sampler, while the model's weights keep the output in the graph) would otherwise
        leave every probe unreached, not only those below the cut.

        ``edges`` are the probe edges of :meth:`collapse` ([src, dst]: dst was computed from src).
        The probes added (``cut``) are the lowest of those the loss reaches without a path to an
        input: the ones just above a cut (each is the source of none of the others); their
        gradient edges come from :meth:`capture_edges`. ``needed`` counts the captured probes'
        nodes as differentiated: the ops above a captured probe run in the backward."""
        entries = self._entries
        loss = next((e.order for e in reversed(entries) if e.kind == "loss"), None)
        if loss is None or entries[loss].ref is None:
            return BackwardPlan([], set(), set())
        srcs: dict[int, list[int]] = {}
        dsts: dict[int, list[int]] = {}
        for a, b in edges:
            srcs.setdefault(b, []).append(a)
            dsts.setdefault(a, []).append(b)
        reached = graph.reachable([loss], srcs)
        # a probed value computed from no probe (nor probed leaf) has no path to a probed input:
        # of those the loss reaches, the ones above a cut (one with a path to an unprobed input,
        # a declared leaf or a weight with grad_weights, is differentiated anyway: harmless)
        cut = [i for i in sorted(reached) if not srcs.get(i) and entries[i].ref is not None
               and not isinstance(entries[i].ref, torch.Tensor)]
        given = {id(t) for t in inputs}
        needed = graph.reachable(
            [i for i, e in enumerate(entries) if isinstance(e.ref, torch.Tensor)
             and id(e.ref) in given] + cut + [e.order for e in self._captured], dsts)
        return BackwardPlan(cut, needed, reached)

    def probed_leaves(self) -> set[int]:
        """ids of the leaf tensors probed in this trace (z0, step-noise leaves)."""
        return {id(e.ref) for e in self._entries if isinstance(e.ref, torch.Tensor)}

    def own(self, handles: list[Any]) -> None:
        """Hooks registered for this trace elsewhere (the op detail's): removed when it closes,
        and counted in its hygiene."""
        self._handles.extend(handles)

    def _materialise(self) -> list[ProbeStats]:
        """Turn the 0-d statistics into floats: one transfer per device, not one per probe."""
        values: dict[int, list[float]] = self._held.flush()
        by_device: dict[torch.device, list[int]] = {}
        for i, e in enumerate(self._entries):
            if e.stats is not None:
                by_device.setdefault(e.stats.device, []).append(i)
        for dev, idx in by_device.items():
            rows = torch.stack([self._entries[i].stats.to(torch.float64) for i in idx]).tolist()
            values.update(zip(idx, rows))
        sig = [e.sigma for e in self._entries if isinstance(e.sigma, torch.Tensor)]
        sig_vals = iter(first_values(sig))
        out = []
        for i, e in enumerate(self._entries):
            sigma = next(sig_vals) if isinstance(e.sigma, torch.Tensor) else e.sigma
            v = values.get(i)
            if v is not None:  # [norm, sum|g|, max|g|, finite] -> [norm, mean|g|, max|g|, nonfinite]
                n = max(1, e.numel)
                v = [v[0], v[1] / n, v[2], e.numel - v[3]]
            out.append(ProbeStats(
                name=e.name, kind=e.kind, order=e.order, step=e.step, call=e.call,
                sigma=float(sigma) if sigma is not None else None, dtype=e.dtype,
                shape=list(e.shape),
                requires_grad=e.requires_grad, grad_fn=e.grad_fn,
                connected_to_z0=e.connected_to_z0, reached=v is not None,
                norm=v[0] if v else None, mean_abs=v[1] if v else None,
                max_abs=v[2] if v else None,
                nonfinite=int(v[3]) if v and math.isfinite(v[3]) else None,
            ))
        return out


def first_values(tensors: list[torch.Tensor]) -> list[float | None]:
    """The first element of each tensor as a float (None for an empty one), in order: one
    concatenation, one gather and one transfer per device and dtype (a sampler's sigma tensors:
    reading each one's first element as it is probed costs three ops a probe)."""
    out: list[float | None] = [None] * len(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel():
            groups.setdefault((t.device, t.dtype), []).append(i)
    with torch.no_grad():
        for idx in groups.values():
            at, starts = 0, []
            for i in idx:
                starts.append(at)
                at += tensors[i].numel()
            flat = torch.cat([tensors[i].reshape(-1) for i in idx])
            pick = flat[torch.tensor(starts, device=flat.device)] if at > len(idx) else flat
            for i, v in zip(idx, pick.double().cpu().tolist()):
                out[i] = v
    return out


def scalars_to_floats(scalars: list[torch.Tensor]) -> list[float]:
    """0-d tensors as floats, in order: one stack and one transfer per device and dtype (not two
    ops a value)."""
    out: list[float] = [0.0] * len(scalars)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(scalars):
        groups.setdefault((t.device, t.dtype), []).append(i)
    for idx in groups.values():
        vals = torch.stack([scalars[i] for i in idx]).double().cpu().tolist()
        for i, v in zip(idx, vals):
            out[i] = v
    return out


def trace(capture: bool = False) -> Trace:
    """A context manager that records the gradient reaching every :func:`probe` inside it
    (``capture``: see :class:`Trace`)."""
    return Trace(capture)


def probe(tensor: torch.Tensor, name: str, *, step: int | None = None, kind: str | None = None,
          sigma: Any = None) -> torch.Tensor:
    """Tag ``tensor`` in the active trace and return it unchanged (a no-op outside a trace).

    Args:
        tensor: any tensor; if it requires grad, the gradient that reaches it is summarised.
        name: a label for reports, e.g. ``"x[3]"``.
        step: the sampler step it belongs to.
        kind: ``z0``, ``x_T``, ``state``, ``step_noise``, ``denoiser_in``, ``denoiser_out``,
            ``output``, ``loss`` or anything else (reported as given).
        sigma: the noise level at that point (float or tensor).
    """
    tr = _ACTIVE.get()
    if tr is None or not isinstance(tensor, torch.Tensor) or in_backward():
        return tensor
    return tr.add(tensor, name, step=step, kind=kind, sigma=sigma)


def alias(x: torch.Tensor) -> torch.Tensor:
    """A fresh autograd node viewing ``x`` (same values): a probe on the alias measures only the
    gradient that flows through the alias's own uses, not all of ``x``'s."""
    return x.view_as(x) if x.requires_grad else x


