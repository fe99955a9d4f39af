"""Numeric localisation of a wrong gradient: where does reverse mode start to disagree?

The numeric check says <v, dL/dz0> by reverse mode differs from finite differences, and the
forward pass shows no cause (no cut, no value that left autograd, no custom Function whose
backward disagrees with its forward). The gradient is then made wrong by something only the
backward pass does: a gradient hook that rescales or clips, a module backward hook, a library op
with a wrong derivative, a checkpointed region recomputed differently from its forward.

The gradient at a probed value x_j (a state, a denoiser input or output) is right when every op
after x_j has a right vector-Jacobian product, so along the trajectory it is right after the op
at fault and wrong before it. Measuring that needs no restart of the sampler at step j:

1. one forward+backward with every probed value replaced by ``x_j + s_j v_j`` (``s_j = 0``, a
   float64 leaf; ``v_j`` a seeded unit direction): ``dL/ds_j = <v_j, dL/dx_j>`` by reverse mode,
   at every probe at once. Values the sampler does not go on with (a probe whose return value
   it ignores) get no gradient and are left out;
2. at a probe, finite differences of the rest of the run, ``(L(x_j + h v_j) - L(x_j - h v_j))/2h``
   (two forward passes at one step size; a sweep of three, and the kink judgement of
   :func:`gradcheck.numeric.judge_kink`, only where they disagree);
3. a bisection over the probes in forward order, between z0 (known wrong) and the loss (right
   by definition): log2(probes) measurements. Flat probes (both ~0: a structural zero) and kinks
   tell nothing and are stepped over.

During the reverse pass every gradient hook registered on a value that carries the gradient
(``Tensor.register_hook``) and every module backward hook is recorded with its line and how
much it changed the gradient it saw; the one between the two probes that bracket the fault is
named. Cost, reported: one forward+backward, and 2 (agreeing) or 6-7 (disagreeing) forward
passes per measurement.
"""
from __future__ import annotations

import math
import contextlib
import time
from typing import Any, Callable

import torch

from .. import patches
from ..numeric import ROUNDOFF_FACTOR, SETTINGS, judge_kink
from ..probes import probe, trace
from ..records import Bisection, BreakEvent, VjpCheck
from ..torch_internals import rel_path, user_frame

#: at most this many hooks are recorded
MAX_HOOKS = 256
#: a hook that changes the gradient it sees by less than this (relative) is not blamed
HOOK_CHANGE = 1e-6


def _direction(t: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded unit vector shaped like ``t`` in float64 (float32 where the device has no
    float64), drawn on the CPU so it is the same on every device."""
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(t.shape, generator=g, dtype=torch.float64)
    v = v / max(float(torch.linalg.vector_norm(v)), 1e-300)
    wide = torch.float32 if t.device.type == "mps" else torch.float64
    return v.to(device=t.device, dtype=wide)


class _Hooks:
    """While the reverse pass runs: every ``Tensor.register_hook`` on a value that requires grad
    (the sampler's own; gradcheck's probes are not counted) and every module backward hook
    (``register_full_backward_hook``), each wrapped to measure how much it changes the gradient."""

    def __init__(self, tr: Any) -> None:
        self.tr = tr
        self.hooks: list[dict[str, Any]] = []
        self._inside = False
        self.subscriptions = contextlib.ExitStack()
        #: hooks and regions that could not be recorded or measured (the user's code still ran)
        self.failures = 0

    def _where(self) -> tuple[int | None, int]:
        entries = self.tr._entries
        step = next((e.step for e in reversed(entries) if e.step is not None), None)
        return step, len(entries)  # the hook came after probe len - 1

    def _wrap(self, info: dict[str, Any], hook: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any) -> Any:
            result = hook(*args)
            info["fired"] += 1
            try:
                seen = args[0] if isinstance(args[0], torch.Tensor) else None
                if info["module"]:  # (module, grad_input, grad_output): the replaced grad_input
                    seen = args[1][0] if args[1] and isinstance(args[1][0], torch.Tensor) \
                        else None
                    result_t = result[0] if isinstance(result, (tuple, list)) and result \
                        else None
                else:
                    result_t = result
                if isinstance(result_t, torch.Tensor) and seen is not None and \
                        result_t is not seen:
                    with torch.no_grad():
                        d = float(torch.linalg.vector_norm((result_t - seen).double()))
                        n = float(torch.linalg.vector_norm(seen.double()))
                    change = d / n if n > 0 else (math.inf if d > 0 else 0.0)
                    info["change"] = max(info["change"], change)
            except Exception:  # noqa: BLE001 - the measurement only; the hook's result stands
                self.failures += 1
            return result
        return measured

    def _register_hook(self, call_next: Callable[..., Any], t: torch.Tensor,
                       hook: Callable[..., Any]) -> Any:
        caller = patches.caller_frame().f_globals.get("__name__", "")
        if self._inside or caller.startswith("gradcheck.") or not t.requires_grad or \
                len(self.hooks) >= MAX_HOOKS:
            return call_next(t, hook)
        self._inside = True  # a TorchFunctionMode sends the call round again: record once
        try:
            loc, fn = user_frame()
            step, after = self._where()
            info = {"name": getattr(hook, "__qualname__", type(hook).__name__),
                    "location": loc, "function": fn, "step": step, "after": after,
                    "fired": 0, "change": 0.0, "module": None}
            self.hooks.append(info)
            return call_next(t, self._wrap(info, hook))
        finally:
            self._inside = False

    def _backward_hook_init(self, call_next: Callable[..., Any], bh: Any, module: Any,
                            user_hooks: Any, user_pre_hooks: Any) -> None:
        try:
            if user_hooks and len(self.hooks) < MAX_HOOKS:
                called, _ = user_frame()
                step, after = self._where()
                wrapped = []
                for h in user_hooks:  # the line to change: the hook's own
                    info = {"name": getattr(h, "__qualname__", type(h).__name__),
                            "location": _source_of(h) or called, "called": called,
                            "function": getattr(h, "__name__", None), "step": step,
                            "after": after,
                            "fired": 0, "change": 0.0, "module": type(module).__name__}
                    self.hooks.append(info)
                    wrapped.append(self._wrap(info, h))
                user_hooks = wrapped
        except Exception:  # noqa: BLE001 - recording only: counted, the module's hooks run
            self.failures += 1
        call_next(bh, module, user_hooks, user_pre_hooks)

    def _checkpoint(self, call_next: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A checkpointed region begins (a non-reentrant frame, or a reentrant
        ``CheckpointFunction``): its backward recomputes the forward, and a recomputation that
        differs (state changed after the forward) gives a wrong gradient."""
        try:
            if len(self.hooks) < MAX_HOOKS:
                loc, fn = user_frame()
                step, after = self._where()
                self.hooks.append({"name": "checkpoint", "location": loc, "function": fn,
                                   "step": step, "after": after, "fired": 0, "change": None,
                                   "module": None, "checkpoint": True})
        except Exception:  # noqa: BLE001 - recording only: counted, the region runs
            self.failures += 1
        return call_next(*args, **kwargs)

    def __enter__(self) -> _Hooks:
        for point, sub in ((patches.REGISTER_HOOK, self._register_hook),
                           (patches.BACKWARD_HOOK_INIT, self._backward_hook_init),
                           (patches.CHECKPOINT_FRAME_INIT, self._checkpoint),
                           (patches.CHECKPOINT_FORWARD, self._checkpoint)):
            self.subscriptions.enter_context(point.subscribe(sub))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.subscriptions.close()


def _source_of(fn: Any) -> str | None:
    """``path:line`` of a function's definition, if Python knows it."""
    import inspect

    try:
        return f"{rel_path(inspect.getsourcefile(fn))}:{inspect.getsourcelines(fn)[1]}"
    except (TypeError, OSError, ValueError):
        return None


class _Runs:
    """The passes of the localisation, counted."""

    def __init__(self, sample_fn: Callable[[torch.Tensor], Any], z0: torch.Tensor,
                 loss_of: Callable[[torch.Tensor], torch.Tensor], run_ctx: Callable[[], Any],
                 seed: int, reduce: Callable[[float], float]) -> None:
        self.sample_fn, self.z0, self.loss_of, self.run_ctx = sample_fn, z0, loss_of, run_ctx
        self.seed, self.reduce = seed, reduce
        self.forwards = self.backwards = 0

    def seed_of(self, order: int) -> int:
        return self.seed + 7919 * order

    def reverse(self) -> tuple[float, dict[int, dict[str, Any]], list[list[int]],
                               list[dict[str, Any]]]:
        """One forward+backward with every probed value moved by s_j v_j (s_j = 0): the loss;
        per probe order its name, kind, step, dtype, squared norm, size and <v_j, dL/dx_j>
        (None: the sampler does not go on with the probed value); the probe graph's edges
        [src, dst]; the hooks and checkpointed regions met."""
        z = self.z0.detach().clone().requires_grad_(True)
        meta: dict[int, dict[str, Any]] = {}
        leaves: dict[int, torch.Tensor] = {}
        with trace() as tr:
            def perturb(order: int, t: torch.Tensor) -> torch.Tensor:
                e = tr._entries[order]
                if order == 0 or e.kind in ("z0", "loss") or not t.requires_grad or \
                        not t.is_floating_point() or t.numel() == 0:
                    return t
                v = _direction(t, self.seed_of(order))
                s = torch.zeros((), dtype=v.dtype, device=t.device, requires_grad=True)
                with torch.no_grad():
                    sq, n = float(t.double().square().sum()), t.numel()
                meta[order] = {"name": e.name, "kind": e.kind, "step": e.step,
                               "dtype": t.dtype, "sq": sq, "n": n}
                leaves[order] = s
                return t + (s * v).to(t.dtype)

            probe(z, "z0", kind="z0")
            with _Hooks(tr) as hooks:
                tr.perturber = perturb
                with self.run_ctx(), torch.enable_grad():
                    out = self.sample_fn(z)
                    out = probe(out, "output", kind="output")
                    loss = self.loss_of(out)
                tr.perturber = None
                edges = tr.collapse(loss)[2] if loss.requires_grad else []
                self.backwards += 1
                orders = sorted(leaves)
                # z too: the backward must run to z0, through every hook on the way
                grads = torch.autograd.grad(loss, [z] + [leaves[o] for o in orders],
                                            allow_unused=True)[1:] if loss.requires_grad \
                    else [None] * len(orders)
        for o, g in zip(orders, grads):
            meta[o]["reverse"] = None if g is None else float(g)
        return float(loss.detach()), meta, edges, hooks.hooks

    def loss_with(self, orders: frozenset[int], h: float) -> tuple[float, float]:
        """The loss with the values at probes ``orders`` each moved by ``h v_j``, and the step
        actually taken along v (one probe: its own rounding can shorten it)."""
        taken = [0.0]
        with trace() as tr:
            def perturb(o: int, t: torch.Tensor) -> torch.Tensor:
                if o not in orders:
                    return t
                v = _direction(t, self.seed_of(o))
                moved = t + (h * v).to(t.dtype)
                taken[0] += float(((moved.double() - t.double()) * v.double()).sum())
                return moved

            z = self.z0.detach()
            probe(z, "z0", kind="z0")
            tr.perturber = perturb
            with self.run_ctx(), torch.no_grad():
                out = self.sample_fn(z)
                out = probe(out, "output", kind="output")
                loss = float(self.loss_of(out).detach())
        self.forwards += 1
        # one probe: the step taken along v (every rank's share of the whole direction)
        step = self.reduce(taken[0]) / self.reduce(1.0) if len(orders) == 1 else h
        return self.reduce(loss), step


def _measure(runs: _Runs, group: list[int], meta: dict[int, dict[str, Any]], l0: float,
             working: torch.dtype) -> VjpCheck:
    """Finite differences with the values at ``group`` moved together, against the sum of their
    reverse-mode values (one probe, or a group: all right, or some wrong)."""
    ms = [meta[o] for o in group]
    low = max((m["dtype"] for m in ms), key=lambda d: torch.finfo(d).eps)
    prec = low if torch.finfo(low).eps > torch.finfo(working).eps else working
    hs, rtol = SETTINGS.get(prec, SETTINGS[torch.float32])
    eps_mach = torch.finfo(prec).eps
    reverse = runs.reduce(sum(m["reverse"] for m in ms))
    scale = max(1.0, (runs.reduce(sum(m["sq"] for m in ms))
                      / runs.reduce(float(sum(m["n"] for m in ms)))) ** 0.5)
    key = frozenset(group)
    rows, losses, best = [], [], None
    verdict = "agrees"
    for rel in (hs[1], hs[0], hs[2]):  # the middle step first; the others only if it disagrees
        h = rel * scale
        (lp, tp), (lm, tm) = runs.loss_with(key, h), runs.loss_with(key, -h)
        step = (tp - tm) / 2 or h
        fd = (lp - lm) / (2 * step)
        floor = ROUNDOFF_FACTOR * eps_mach * max(abs(lp), abs(lm), abs(l0)) / step
        row = {"eps": step, "fd": fd, "abs_error": abs(fd - reverse), "roundoff_floor": floor}
        rows.append(row)
        losses.append((lp, lm))
        if best is None or row["abs_error"] < best["abs_error"]:
            best = row
        mag = max(abs(best["fd"]), abs(reverse))
        if mag <= best["roundoff_floor"]:
            verdict = "flat"
            break
        if best["abs_error"] <= rtol * mag + best["roundoff_floor"]:
            verdict = "agrees"
            break
        verdict = "disagrees"
    if verdict == "disagrees":  # at every step size: a kink of the sampler, or the gradient?
        by_size = sorted(range(len(rows)), key=lambda i: -rows[i]["eps"])
        verdict, _ = judge_kink(l0, [rows[i] for i in by_size], [losses[i] for i in by_size],
                                reverse, rtol)
    mag = max(abs(best["fd"]), abs(reverse))
    names = [m["name"] for m in ms]
    return VjpCheck(probe=names[0] if len(names) == 1 else "{" + ", ".join(names) + "}",
                    order=group[0], step=ms[0]["step"], kind=ms[0]["kind"], reverse=reverse,
                    fd=best["fd"], rel_error=best["abs_error"] / mag if mag > 0 else 0.0,
                    verdict=verdict)


def bisect(sample_fn: Callable[[torch.Tensor], Any], z0: torch.Tensor,
           loss_of: Callable[[torch.Tensor], torch.Tensor], *, run_ctx: Callable[[], Any],
           seed: int, working: torch.dtype | None = None,
           reduce: Callable[[float], float] | None = None) -> tuple[Bisection, BreakEvent]:
    """Find the probe W whose gradient is wrong while the gradient at every probe computed
    directly from it is right: the op at fault lies between W and them (see the module docs).
    Returns the record and the event that names it (a hook or a checkpointed region there, when
    one is)."""
    t0 = time.perf_counter()
    runs = _Runs(sample_fn, z0, loss_of, run_ctx, seed, reduce or (lambda x: x))
    working = working or z0.dtype
    l0, meta, edges, sites = runs.reverse()
    l0 = runs.reduce(l0)
    cands = [o for o in sorted(meta) if meta[o].get("reverse") is not None]
    res = Bisection(probes=len(cands))
    verdicts: dict[int, str] = {}

    def measure(group: list[int]) -> str:
        chk = _measure(runs, group, meta, l0, working)
        res.checks.append(chk)
        if len(group) == 1:
            verdicts[group[0]] = chk.verdict
        return chk.verdict

    # 1. along the trajectory (forward order): z0 is wrong, the loss right
    lo, hi = -1, len(cands)
    order_ = list(cands)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = measure([order_[mid]])
        if v == "disagrees":
            lo = mid
        elif v == "agrees":
            hi = mid
        else:  # flat, a kink or inconclusive: tells nothing, step over it
            del order_[mid]
            hi -= 1
    wrong = order_[lo] if lo >= 0 else 0
    # 2. a branchy graph (step noise derived from z0, a denoiser's skip path): the gradient is
    #    wrong at W; is it right at every probe computed directly from W? If not, go on from
    #    the wrong one (group tests: the successors moved together, halved while they disagree)
    succ_of: dict[int, list[int]] = {}
    for a, b in edges:
        if b in meta and meta[b].get("reverse") is not None and b not in succ_of.get(a, []):
            succ_of.setdefault(a, []).append(b)
    seen = {wrong}
    while True:
        group = sorted(o for o in succ_of.get(wrong, []) if verdicts.get(o) != "agrees")
        if not group or measure(group) != "disagrees":
            break
        while len(group) > 1:
            half = group[:len(group) // 2]
            group = half if measure(half) == "disagrees" else group[len(group) // 2:]
        if group[0] in seen:
            break
        wrong = group[0]
        seen.add(wrong)
    succ = succ_of.get(wrong, [])
    right = min(succ) if succ else (order_[hi] if hi < len(order_) else None)
    w = meta.get(wrong)
    r = meta.get(right) if right is not None else None
    res.wrong_at = w["name"] if w else "z0"
    res.right_at = (", ".join(meta[o]["name"] for o in sorted(succ)) if succ else
                    (r["name"] if r else None))
    res.step = w["step"] if w and w["step"] is not None else (r["step"] if r else None)
    res.rel_error = next((c.rel_error for c in res.checks if c.order == wrong and
                          not c.probe.startswith("{")), None)
    res.forwards, res.backwards = runs.forwards, runs.backwards
    if not cands:
        res.note = ("no probed value the sampler goes on with (its probes' return values are "
                    "ignored): the fault lies somewhere between z0 and the loss")
    upto = max(succ) if succ else (right if right is not None else math.inf)
    event = _event(res, sites, wrong, upto, w, r, {o: meta[o] for o in succ})
    res.seconds = time.perf_counter() - t0
    return res, event


def _event(res: Bisection, sites: list[dict[str, Any]], lo_order: int, hi_order: float,
           wrong: dict[str, Any] | None, right: dict[str, Any] | None,
           succ: dict[int, dict[str, Any]]) -> BreakEvent:
    """The event naming the fault between probes ``lo_order`` and ``hi_order``: a hook there
    that changed the gradient, else a checkpointed region there, else a hook elsewhere that
    did, else the ops between the two probes. ``succ``: the probes computed directly from
    ``lo_order``'s (a named site lies before the first of them made after it)."""
    def inside(h: dict[str, Any]) -> bool:
        return lo_order < h["after"] <= hi_order

    changed = [h for h in sites if h["change"] is not None and h["change"] > HOOK_CHANGE]
    regions = [h for h in sites if h.get("checkpoint") and inside(h)]
    between = (f"between {res.wrong_at} (its gradient is wrong"
               + (f", relative error {res.rel_error:.2e}" if res.rel_error is not None else "")
               + ") and " + (f"{res.right_at} (right)" if res.right_at else "the loss"))
    cost = (f"numeric localisation: {len(res.checks)} measurement(s) over {res.probes} probed "
            f"values, {res.forwards} forward pass(es) and {res.backwards} forward+backward")
    ends = dict(before=res.wrong_at, before_kind=wrong["kind"] if wrong else "z0",
                after=res.right_at, after_kind=right["kind"] if right else "loss")
    hook = ([h for h in changed if inside(h)] or regions or changed or [None])[0]
    nxt = min((o for o in succ if hook is not None and o >= hook["after"]), default=None)
    if nxt is not None:  # of W's successors, the one computed right after the site
        ends.update(after=succ[nxt]["name"], after_kind=succ[nxt]["kind"])
    if hook is not None and hook.get("checkpoint"):
        return BreakEvent(
            kind="bias", cause="wrong_vjp", op="checkpointed region", location=hook["location"],
            function=hook["function"], step=hook["step"] if hook["step"] is not None
            else res.step, **ends,
            detail=(f"the gradient is wrong {between}, where a checkpointed region recomputes "
                    f"its forward during backward: the recomputation must reproduce the forward "
                    f"exactly (it reads state changed after the forward, or draws other random "
                    f"numbers), else the gradient is that of another function; {cost}"))
    if hook is not None:
        what = f"module backward hook on {hook['module']}" if hook["module"] else "gradient hook"
        return BreakEvent(
            kind="bias", cause="module_hook" if hook["module"] else "gradient_hook",
            op=f"{what} {hook['name']}", step=hook["step"] if hook["step"] is not None
            else res.step, location=hook["location"], function=hook["function"], **ends,
            detail=(f"the {what} "
                    + (f"(on the module called at {hook['called']}) " if hook.get("called")
                       else "registered here ")
                    + f"changes the gradient it is given (by {hook['change']:.2e} relative, "
                    f"{hook['fired']} call(s)): reverse mode is no longer the derivative of the "
                    f"forward pass; the fault lies {between}"
                    + ("" if inside(hook) else " (the hook is outside that range: check both)")
                    + f"; {cost}"))
    return BreakEvent(
        kind="bias", cause="wrong_vjp", op=f"the ops between {res.wrong_at} and "
        f"{res.right_at or 'the loss'}", step=res.step, **ends,
        detail=(f"the gradient is wrong {between}: an op there has a backward that is not the "
                f"derivative of its forward, and it is neither a custom autograd.Function nor a "
                f"gradient hook (a library op with a wrong derivative, a forward that is not "
                f"deterministic); {cost}"))
