"""The further evidence a diagnosis buys (as :mod:`gradcheck.plan` decides): the numeric check and
its float64 shadow, the optimizer probe, the path probe, the re-measurement at the sampler's
working precision, the user's source around a break. :mod:`gradcheck.diagnosis` runs them."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable

import torch

from .callcheck import CallCapture, check_calls
from .checks import numeric_directional
from .numeric import directional_check
from .policy import Local
from .probes import trace
from .records import FlowReport, LocatorResult, NumericResult, OptimResult, PathProbe
from .recording import Loss, Recording, runner
from .sampling.noise import path_cotangent


#: machine epsilon -> floating dtype (the precision a sampler computes in, agreed across ranks)
_DTYPE_OF_EPS = {torch.finfo(d).eps: d for d in (torch.float64, torch.float32, torch.bfloat16,
                                                 torch.float16)}


# -- stages 3 and 4: the numeric check and the optimizer probe ------------------------------------

def loss_at(run: Callable[[torch.Tensor], torch.Tensor], loss: Loss,
            policy: Local) -> Callable[[torch.Tensor], float]:
    """``z -> L(sampler(z))`` as a float, without autograd (one forward pass a call)."""
    def at(z: torch.Tensor) -> float:
        with torch.no_grad():
            return policy.sum(float(loss.of(run(z)).detach()))
    return at


def numeric_check(run: Callable[[torch.Tensor], torch.Tensor], loss: Loss, rec: Recording, *,
                  seed: int, policy: Local, working: torch.dtype | None = None,
                  directions: int | None = None, full_sweep: bool = False,
                  one_sided: bool | str = False) -> NumericResult:
    """Finite differences of the loss along seeded unit directions against <v, dL/dz0>
    (2 forward passes per step size; ``directions``: default by working precision).
    ``one_sided``: first a one-sided difference from the recorded loss (one forward pass);
    ``"float64"``: only where the working precision is float64, whose round-off leaves the
    one-sided difference the central pair's power (below it, its smaller step's round-off
    allowance would weaken the check: the ``default`` level differences centrally there)."""
    if one_sided == "float64":
        one_sided = (working or rec.z.dtype) == torch.float64
    return directional_check(loss_at(run, loss, policy), rec.z, rec.z_grad, seed=seed,
                             working=working, straddles=straddles(run, policy),
                             directions=directions, full_sweep=full_sweep,
                             l0=rec.loss_value if one_sided else None, **policy.numeric_kw())


def straddles(run: Callable[[torch.Tensor], torch.Tensor],
              policy: Local) -> Callable[[torch.Tensor, torch.Tensor], bool]:
    """``(z_a, z_b) -> bool``: did some piecewise op (clamp, relu, abs, max, a where on a
    comparison) take another branch at z_a than at z_b, on any rank? Two forward passes under
    :class:`gradcheck.branches.BranchWatch`; asked only where a difference disagrees."""
    from .branches import signature

    def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
        return policy.any(signature(run, a) != signature(run, b))
    return differ


_WARM: list[float] = []


def warm_optimizer() -> float:
    """Pay torch.optim's one-time cost (lazy imports, first-step set-up: about 2 s in a fresh
    process) once per process, outside the timed stages; returns the seconds it took (0 after
    the first call)."""
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.ones(1)
    opt.step()
    _WARM.append(time.perf_counter() - t0)
    return _WARM[0]


def verified(num: NumericResult | None, shadow: NumericResult | None) -> str | None:
    """Why a measured Adam step would add nothing about the gradient: the numeric check agreed
    with reverse mode on smooth evidence in float64 (the sampler's own run or a judged float64
    shadow). None where it did not (skipped, a kink, inconclusive, below float64)."""
    for n, what in ((num, "the sampler's run"), (shadow, "a float64 shadow run")):
        if n is not None and n.skipped is None and n.verdict == "agrees" and \
                (n.working_dtype or n.dtype) == "float64" and n.rel_error <= n.rtol:
            return (f"the numeric check verified dL/dz0 in float64 on {what} (relative error "
                    f"{n.rel_error:.1e}), so the step's forward pass would only test whether "
                    f"lr suits the loss's curvature; --checks full measures it")
    return None


def _adam_step(rec: Recording, lr: float, objective: str) -> torch.Tensor:
    """z0 after one Adam step at ``lr`` along the recorded gradient (no forward pass)."""
    q = rec.z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=lr, maximize=objective == "maximize")
    q.grad = rec.z_grad.detach().clone()
    opt.step()
    return q.detach()


def optimizer_probe(run: Callable[[torch.Tensor], torch.Tensor], loss: Loss, rec: Recording, *,
                    steps: int, lr: float, policy: Local,
                    unmeasured: str | None = None) -> OptimResult:
    """``steps`` Adam steps on a copy of z0, the first with the recorded gradient (each step one
    forward pass, and one backward pass but for the last): does z0 change, does the loss move
    the intended way? With ``unmeasured`` (why) and one step, no forward pass: the step is
    taken and its first-order effect on the loss, <dL/dz0, dz0>, reported instead."""
    sign = 1.0 if loss.objective == "maximize" else -1.0
    if unmeasured is not None and steps == 1 and rec.z_grad is not None:
        dz = _adam_step(rec, lr, loss.objective) - rec.z.detach()
        predicted = policy.sum(float((rec.z_grad.detach().double() * dz.double()).sum()))
        if sign * predicted > 0:  # else measure: a zero step, or one the wrong way
            return OptimResult(lr=lr, steps=steps, objective=loss.objective, z0_changed=True,
                               max_abs_change=float(dz.abs().max()), losses=[rec.loss_value],
                               predicted=predicted, unmeasured=unmeasured)
    p = rec.z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, maximize=loss.objective == "maximize")
    losses = [rec.loss_value]
    changed, max_change = False, 0.0
    grad = rec.z_grad
    for k in range(steps):
        p.grad = None if grad is None else grad.detach().clone()
        before = p.detach().clone()
        opt.step()
        delta = float((p.detach() - before).abs().max())
        if k == 0:
            changed, max_change = delta > 0, delta
        last = k + 1 == steps
        with torch.no_grad() if last else contextlib.nullcontext():  # the last needs no graph
            value = loss.of(run(p))
        losses.append(policy.sum(float(value.detach())))
        if not last:
            grad = (torch.autograd.grad(value, [p], allow_unused=True)[0]
                    if value.requires_grad else None)
    backtrack: list[list[float]] = []
    if rec.z_grad is not None and not sign * (losses[-1] - losses[0]) > 0:
        # the loss went the wrong way: is the step too large for a curved or kinked loss, or
        # the gradient wrong? One step along the same gradient at halved rates (one forward
        # pass each, only in this case); a wrong gradient does not get better
        at = loss_at(run, loss, policy)
        for k in range(1, 4):
            value = at(_adam_step(rec, lr / 2 ** k, loss.objective))
            backtrack.append([lr / 2 ** k, value])
            if sign * (value - losses[0]) > 0:
                break
    return OptimResult(lr=lr, steps=steps, objective=loss.objective, z0_changed=changed,
                       max_abs_change=max_change, losses=losses, backtrack=backtrack)


# -- stage 3b: a float64 shadow run --------------------------------------------------------------

def shadow_check(sample_fn: Any, z0: torch.Tensor, loss: Loss, *, seed: int,
                 policy: Local, per_call: bool = False) -> NumericResult | None:
    """Below float64 one random direction cannot prove a gradient right (a 2% error hides along
    most directions at float32's tolerance). Where the sampler can be cast (``at_dtype``), the
    same sampler runs in float64: one forward + backward for its gradient, then the float64
    numeric check (2 forward passes per step size), which catches a 2% error with >= 99%
    probability. None where it cannot be cast. Where it disagrees (or ``per_call``), each
    recorded denoiser call is checked alone (:mod:`gradcheck.callcheck`)."""
    shadow, capture = _shadow_of(sample_fn)
    if shadow is None:
        return None
    try:
        res = _shadow_check(shadow, z0, loss, seed=seed, policy=policy, capture=capture)
        res.copy_bytes = getattr(shadow, "shadow_bytes", None)
        if capture is not None and capture.calls and res.skipped is None and (
                per_call or res.verdict == "disagrees"):
            res.calls = check_calls(capture, seed)
        return res
    finally:  # an adapter's denoiser modules cast in place go back (gradcheck.shadow)
        close = getattr(shadow, "close", None)
        if close is not None:
            close()


def _shadow_of(sample_fn: Any) -> tuple[Any, CallCapture | None]:
    """The float64 shadow with a :class:`CallCapture` around its denoiser, where it has one."""
    import inspect

    at = sample_fn.at_dtype
    if "wrap" in inspect.signature(at).parameters:  # an adapted sampler
        box: list[CallCapture] = []
        shadow = at(torch.float64, wrap=lambda d: box.append(CallCapture(d)) or box[-1])
        return shadow, (box[0] if box else None)
    shadow = at(torch.float64)
    if shadow is not None and hasattr(shadow, "denoiser"):  # the built-in sampler's copy
        shadow.denoiser = CallCapture(shadow.denoiser)
        return shadow, shadow.denoiser
    return shadow, None


def _shadow_check(shadow: Any, z0: torch.Tensor, loss: Loss, *, seed: int,
                  policy: Local, capture: CallCapture | None = None) -> NumericResult:
    from .locate.provenance import Provenance

    run64 = runner(shadow, seed, z0.device)
    z = z0.detach().to(torch.float64).clone().requires_grad_(True)
    # its forward under the provenance mode: a sampler that computes in lower precision inside
    # (a .float() cast, a float32 scheduler step) gives no float64 evidence to judge by
    with trace() as tr, torch.enable_grad():
        prov = Provenance(tr, [z])
        if capture is not None:
            capture.on = True  # the inputs of this pass's denoiser calls, for callcheck
        try:
            with prov:
                value = loss.of(run64(z))
        finally:
            if capture is not None:
                capture.on = False
        grad = None
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value, [z], allow_unused=True)
    low = prov.lowest_dtype
    if low is not None and low != torch.float64:
        name = str(low).replace("torch.", "")
        return NumericResult(dtype="float64", direction_seed=int(seed), eps=None, fd=None,
                             reverse=None, abs_error=None, rel_error=None, rtol=0.0, atol=0.0,
                             skipped=f"the float64 shadow run computes in {name} inside, so it "
                             f"cannot judge at float64's tolerance")
    return directional_check(loss_at(run64, loss, policy), z, grad, seed=seed,
                             straddles=straddles(run64, policy), **policy.numeric_kw())


# -- stage 5b: a stationary loss or a dead path? -----------------------------------------------------

def probe_path(run: Callable[[torch.Tensor], torch.Tensor], rec: Recording, *, seed: int,
               policy: Local) -> PathProbe:
    """dL/d(output) was exactly zero, so no gradient came back to tell a healthy path from a
    dead one: one forward pass and one backward pass from the output along a seeded random
    direction. A dead path (z0's gradient still exactly zero) means the output does not depend
    on z0; a live one, that only the loss is stationary."""
    z = rec.z.detach().clone().requires_grad_(True)
    out = run(z)
    g = None
    if out.requires_grad:
        (g,) = torch.autograd.grad(out, [z], grad_outputs=path_cotangent(out, seed, policy.rank),
                                   allow_unused=True)
    sq = policy.sum(0.0 if g is None else float(g.detach().double().square().sum()))
    return PathProbe(seed=int(seed), z0_norm=sq ** 0.5, dead=sq == 0.0)


def source_around(location: str | None, context: int = 3) -> tuple[list[str], int | None]:
    """The lines of the user's source around ``path:line`` (``context`` either side), and the
    number of the first; nothing when the file cannot be read (a REPL, a notebook cell)."""
    import linecache

    from .torch_internals import find_source

    if not location or ":" not in location:
        return [], None
    path, _, line = location.rpartition(":")
    if not line.isdigit() or path.startswith("<"):
        return [], None
    n = int(line)
    first = max(1, n - context)
    path = find_source(path) or path  # a module path (site-packages) or one relative to cwd
    lines = [linecache.getline(path, i).rstrip("\n") for i in range(first, n + context + 1)]
    while lines and not lines[-1].strip():
        lines.pop()
    if not any(x.strip() for x in lines):
        return [], None
    return lines, first


def remeasure_at_working_precision(run: Callable[[torch.Tensor], torch.Tensor], loss: Loss,
                                   rec: Recording, report: FlowReport, loc: LocatorResult, *,
                                   seed: int, policy: Local) -> NumericResult | None:
    """A sampler that computes in lower precision inside than z0's dtype (diffusers' schedulers
    step in float32), as the provenance pass (``loc``) saw, gets the numeric check at that
    precision: measured again with that dtype's step sizes (2 forward passes per step size),
    never judged looser on the old measurements. Returns it (None: not measured again).
    ``report`` is the evidence judged so far."""
    z = rec.z
    low = loc.lowest_dtype
    eps = policy.max(torch.finfo(getattr(torch, low) if low else z.dtype).eps)  # every rank alike
    num = report.numeric
    if num is None or num.skipped or eps <= torch.finfo(z.dtype).eps:
        return None
    t0 = time.perf_counter()
    was_failing = not report.check("numeric_directional").passed
    working = _DTYPE_OF_EPS.get(eps) or getattr(torch, low or "float32")
    again = numeric_check(run, loss, rec, seed=seed, policy=policy, working=working)
    report.timings["numeric_s"] = report.timings.get("numeric_s", 0.0) + time.perf_counter() - t0
    if was_failing and numeric_directional(dataclasses.replace(report, numeric=again)).passed \
            and loc.primary is None:
        loc.note = None  # it explained a mismatch that was round-off
    return again


