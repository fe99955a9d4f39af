"""``diagnose(sample_fn, z0)``: run a sampler under a trace, back-propagate, judge.

A diagnosis is a few stages, each a function with explicit inputs and outputs (see
:func:`diagnose`, which reads as their sequence):

    build_loss -> record (forward + backward under the trace) -> numeric_check -> optimizer_probe
      -> assemble + judge (pure: gradcheck.checks) -> locate_stage (only when needed; it runs
      remeasure_at_working_precision) -> policy.merge (ranks)

The stages record (torch); :mod:`gradcheck.checks` judges the record (pure); renderers draw it.
How a diagnosis behaves across processes is one object, :mod:`gradcheck.policy`, handed to the
stages that need it (a single process is the trivial policy).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import graph, modes, observers
from .checks import numeric_directional, run_checks
from .errors import ConfigError, GradcheckError, InputError
from .numeric import DIRECTIONS, directional_check
from .opdetail import AUTO_BUDGET_S, OpGrads, OpSources
from .options import Options
from .plan import LEVELS, Facts, Plan, plan, random_target
from .policy import Local, current
from .probes import probe, trace
from .rng import seeded
from .records import (
    Cost, FlowReport, GradSite, Hygiene, NumericResult, OptimResult, PathProbe, ProbeStats,
    Raised, StageCost, StepGraph,
)
from .sampling.noise import path_cotangent

#: machine epsilon -> floating dtype (the precision a sampler computes in, agreed across ranks)
_DTYPE_OF_EPS = {torch.finfo(d).eps: d for d in (torch.float64, torch.float32, torch.bfloat16,
                                                 torch.float16)}


def validate_z0(z0: Any) -> torch.Tensor:
    if not isinstance(z0, torch.Tensor):
        raise InputError(f"z0 must be a tensor, got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise InputError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if z0.ndim < 1 or z0.numel() == 0:
        raise InputError(f"z0 must have a batch dimension and elements, got shape {tuple(z0.shape)}")
    bad = (~torch.isfinite(z0)).sum().item()
    if bad:
        nan = torch.isnan(z0).sum().item()
        raise InputError(
            f"z0 contains {bad} non-finite value(s) ({nan} NaN, {bad - nan} Inf) of {z0.numel()}"
        )
    return z0


def _as_output(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise GradcheckError(
            f"sample_fn returned {type(out).__name__}, expected the sampler output tensor"
        )
    return out


def runner(sample_fn: Callable[[torch.Tensor], Any], seed: int,
           device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z -> sample_fn(z)`` under the diagnosis's seeded global RNG (the same function of z on
    every call, even for a sampler that draws from the global generator). The grad mode is
    restored after each call: a sampler that switches it off and leaves it off (reported by the
    record stage's hygiene) must not change the passes after it."""
    def run(z: torch.Tensor) -> torch.Tensor:
        grad_mode = torch.is_grad_enabled()
        try:
            with seeded(seed, device):
                return _as_output(sample_fn(z))
        finally:
            torch.set_grad_enabled(grad_mode)
    return run


class Counted:
    """The sampler, counting its calls (each one forward pass) for the cost report; attributes
    pass through, and a float64 shadow (``at_dtype``) counts into the same tally."""

    def __init__(self, inner: Callable[..., Any], tally: list[int] | None = None) -> None:
        self.inner = inner
        self.tally = tally if tally is not None else [0]

    @property
    def calls(self) -> int:
        return self.tally[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.tally[0] += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name == "at_dtype":
            def at_dtype(dtype: torch.dtype) -> Any:
                return Counted(value(dtype), self.tally)
            return at_dtype
        return value


def cost_of(stages: list[tuple[str, int, int, float]], unit_s: float, checks: str) -> Cost:
    """The :class:`Cost` of ``(stage, forwards, backwards, seconds)`` rows."""
    unit = unit_s if unit_s > 0 else float("nan")
    rows = [StageCost(stage=n, forwards=f, backwards=b, seconds=t, units=t / unit)
            for n, f, b, t in stages]
    return Cost(unit_s=unit_s, stages=rows, total_units=sum(r.units for r in rows),
                forwards=sum(r.forwards for r in rows), backwards=sum(r.backwards for r in rows),
                checks=checks)


# -- stage 1: the loss ----------------------------------------------------------------------------

@dataclass
class Loss:
    """What is differentiated: ``of(output) -> scalar``, in words, and which way is better."""

    of: Callable[[torch.Tensor], torch.Tensor]
    description: str
    objective: str
    timings: dict[str, float] = field(default_factory=dict)
    user: bool = False  # the user's loss_fn (its ops have the user's lines), not a built-in one


def build_loss(run: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *,
               loss_fn: Callable[[torch.Tensor], torch.Tensor] | None,
               target: torch.Tensor | None, objective: str | None, seed: int,
               policy: Local, random_target: bool = False) -> Loss:
    """The user's ``loss_fn``, MSE to ``target``, or (default) MSE to a baseline: the sampler's
    output (no grad) from a different seeded noise draw. One forward pass for the baseline;
    ``random_target`` (``checks="quick"``) saves it: MSE to seeded standard normal noise of the
    output's shape, drawn when the first output is seen."""
    timings: dict[str, float] = {}
    if loss_fn is not None:
        loss = Loss(loss_fn, "user loss_fn(output)", "minimize", user=True)
    elif target is not None:
        tgt = target.detach()
        loss = Loss(lambda out: policy.mse(out, tgt), "MSE(output, target)", "minimize")
    elif random_target:
        drawn: dict[tuple, torch.Tensor] = {}

        def to_noise(out: torch.Tensor) -> torch.Tensor:
            key = tuple(out.shape)
            if key not in drawn:
                g = torch.Generator().manual_seed(int(seed) + 104729)
                drawn[key] = torch.randn(key, generator=g, dtype=torch.float64)
            return policy.mse(out, drawn[key].to(device=out.device, dtype=out.dtype))

        loss = Loss(to_noise, f"MSE(output, seeded standard normal noise (seed {int(seed)})); "
                    f"no baseline draw (checks=quick)", "maximize")
    else:
        z_base = policy.baseline_noise(z0, seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            baseline = run(z_base).detach()
        timings["baseline_s"] = time.perf_counter() - t0
        loss = Loss(lambda out: policy.mse(out, baseline),
                    f"MSE(output, baseline); baseline = the sampler's output from independent "
                    f"noise (derived from seed {int(seed)})", "maximize")
    loss.objective = objective or loss.objective
    loss.timings = timings
    if loss.objective not in ("minimize", "maximize"):
        raise ConfigError(f"objective must be 'minimize' or 'maximize', got {loss.objective!r}")
    return loss


# -- stage 2: record ------------------------------------------------------------------------------

@dataclass
class Recording:
    """What one forward + backward under the trace observed (the live tensors for the later
    stages, the plain statistics for the report)."""

    z: torch.Tensor  # the leaf copy of z0 that was differentiated
    z_grad: torch.Tensor | None
    out: torch.Tensor
    loss_value: float
    out_requires_grad: bool
    loss_requires_grad: bool
    probes: list[ProbeStats]
    hygiene: Hygiene
    graph: StepGraph
    raw_graph: Any = None  # the op-level graph above the cap (keep_raw_graph), not serialised
    timings: dict[str, float] = field(default_factory=dict)
    raised: Any = None  # a Raised record: the sampler or its backward raised (nothing else ran)
    unit_s: float = 0.0  # this pass's forward + backward seconds (no graph walk): the cost unit


def raised_record(exc: BaseException, phase: str, tr: Any) -> Raised:
    """What the sampler (or its backward) raised, located: the innermost user frame of the
    traceback, the step the forward had reached, the original message, a hint for the usual
    causes."""
    from .torch_internals import is_user_file

    loc = fn = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if is_user_file(code.co_filename):
            loc, fn = f"{os.path.relpath(code.co_filename)}:{tb.tb_lineno}", code.co_name
        tb = tb.tb_next
    step = next((e.step for e in reversed(tr._entries) if e.step is not None), None) \
        if phase == "forward" else None
    message = (str(exc).strip().splitlines() or [""])[0][:500]
    hint = None
    if "Inference tensors cannot be saved for backward" in message:
        hint = ("a value made under torch.inference_mode() reached an op that saves it for "
                "backward: make it outside inference_mode (or .clone() it there), or diagnose "
                "with allow_grad=True to neutralise the inference_mode")
    elif phase == "backward":
        hint = ("raised while back-propagating: a custom autograd.Function's backward, a "
                "gradient hook, a checkpoint's recomputation or a tensor modified in place "
                "after it was saved")
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Raised(phase=phase, type=type(exc).__name__, message=message, step=step,
                  location=loc, function=fn, hint=hint, traceback=text[-4000:])


def record(sample_fn: Callable[[torch.Tensor], Any], z0: torch.Tensor, loss: Loss, *,
           seed: int, capture_graph: bool, raw_graph_cap: int, keep_raw_graph: bool,
           policy: Local, op_detail: str = "auto", grad_weights: bool = False) -> Recording:
    """One forward pass of the sampler under the trace, the loss, and one backward pass (with
    ``torch.autograd.grad``: the user's ``.grad`` fields are untouched). With ``op_detail`` the
    same pass also notes each op's source line and the gradient at its output
    (:mod:`gradcheck.opdetail`)."""
    # one trace context holds the forward, the graph capture and the backward: the probes'
    # hooks must be registered while the graph is alive and removed when the trace closes
    z = z0.detach().clone().requires_grad_(True)
    z_grad = None
    raw_full = None
    grad_s = 0.0
    plan = None
    timings: dict[str, float] = {}
    phase = ["forward"]
    grad_mode = torch.is_grad_enabled()
    changed = False
    try:
        with trace(capture=True) as tr:
            probe(z, "z0", kind="z0")
            t0 = time.perf_counter()
            sources = None
            if capture_graph and op_detail != "never":
                sources = OpSources(AUTO_BUDGET_S if op_detail == "auto" else None,
                                    capture=True)
            try:
                with seeded(seed, z0.device), (sources or contextlib.nullcontext()):
                    out = sample_fn(z)
                changed = torch.is_grad_enabled() != grad_mode
                torch.set_grad_enabled(grad_mode)  # a sampler that leaks no_grad is reported
                probe(_as_output(out), "output", kind="output")
                # the loss's ops too: their |g| in the op view, and their lines (the user's
                # loss_fn; a built-in loss is named as gradcheck's, not by a line of its code)
                with (sources.labelled(None if loss.user else "gradcheck's loss")
                      if sources is not None and sources.skipped is None
                      else contextlib.nullcontext()):
                    value = loss.of(out)
            finally:
                if sources is not None:  # its hooks on the ops' outputs go with the trace
                    tr.own(sources.hooks)
            if not (isinstance(value, torch.Tensor) and value.numel() == 1):
                raise GradcheckError(f"loss_fn must return a scalar tensor, got {value!r:.80}")
            probe(value, "loss", kind="loss")
            timings["forward_s"] = time.perf_counter() - t0
            out_rg, loss_rg = bool(out.requires_grad), bool(value.requires_grad)
            t0 = time.perf_counter()
            # the walk and what is built from its nodes, with the collector paused (see
            # graph.collector_paused): the node wrappers are gone before it runs again
            with graph.collector_paused():
                if capture_graph:
                    inputs, total, edges, regions, op_regions = tr.collapse(
                        value if loss_rg else None)
                else:  # no walk: gradients for z0 and the step-noise leaves only
                    inputs = [z, *getattr(sample_fn, "leaves", [])] if loss_rg else []
                    total, edges, regions, op_regions = 0, [], {}, []
                step_graph = StepGraph(
                    nodes=sorted({i for e in edges for i in e} | set(regions)), edges=edges,
                    region_ops={str(k): v for k, v in regions.items()}, total_nodes=total,
                    raw_cap=raw_graph_cap, regions=[reg for reg, _ in op_regions],
                )
                op_grads = None
                if sources is not None and sources.skipped is None:
                    for reg, nodes in op_regions:
                        reg.where = sources.sources(nodes)
                    step_graph.detail = True
                    if loss_rg:  # no backward, no gradient: the lines still say where each op is
                        op_grads = OpGrads(op_regions, sources)
                elif capture_graph:
                    step_graph.detail_skipped = (
                        "op_detail='never'" if sources is None else sources.skipped
                        or "the loss is not in an autograd graph")
                del op_regions, sources
            if not capture_graph:
                step_graph.raw_skipped = "graph capture was off (capture_graph=False)"
            elif not loss_rg:
                step_graph.raw_skipped = "the loss is not in an autograd graph"
            elif total <= raw_graph_cap:
                step_graph.raw = graph.op_graph(value)
            else:
                step_graph.raw_skipped = (f"{total} autograd nodes > cap {raw_graph_cap}: too many "
                                          f"to lay out quickly")
                if keep_raw_graph:
                    raw_full = graph.op_graph(value)
            if loss_rg:
                # differentiate w.r.t. z0 and the probed leaves (step-noise leaves): a model's
                # weights that require grad (a diffusers UNet's do) cost a third of the backward
                # and tell nothing about z0, so they are left out unless asked; .grad untouched
                keep = tr.probed_leaves() | {id(z)} | {
                    id(t) for t in getattr(sample_fn, "leaves", [])}
                inputs = [t for t in inputs if t.requires_grad and (grad_weights or id(t) in keep)]
                # probes above a cut between the loss and z0 are differentiated too: autograd
                # would prune them (see Trace.backward_plan)
                plan = tr.backward_plan(edges, inputs) if capture_graph else None
                if op_grads is not None and plan is not None and not grad_weights:
                    # ops that read weights only: their gradient is not asked for (worked out
                    # before the backward: their outputs are not captured, which would make
                    # the backward compute them)
                    for reg in step_graph.regions:
                        if reg.weights and reg.probe in plan.reached and not reg.dropped:
                            reg.not_asked = graph.not_asked(len(reg.ops), reg.edges,
                                                            reg.sources, plan.needed)
                # the small probes' and ops' gradients are captured, not hooked (see Trace)
                probed = tr.capture_edges(plan.cut if plan is not None else [])
                ops = op_grads.capture_edges() if op_grads is not None else []
                phase[0] = "backward"
                t_b = time.perf_counter()
                grads = torch.autograd.grad(value, [*inputs, *probed, *ops],
                                            allow_unused=True) if inputs or probed or ops else []
                n = len(inputs) + len(probed)
                tr.deliver(grads[len(inputs):n])
                if op_grads is not None:
                    op_grads.deliver(grads[n:])
                del probed, ops
                grad_s = time.perf_counter() - t_b
                phase[0] = "done"
                for t, gr in zip(inputs, grads):
                    if t is z:
                        z_grad = gr
                del grads, inputs
            if op_grads is not None:
                op_grads.materialise()
            timings["backward_s"] = time.perf_counter() - t0
            loss_value = policy.sum(float(value.detach()))
    except GradcheckError:
        raise  # gradcheck's own one-line errors (a denoiser of the wrong shape, a bad loss)
    except Exception as exc:  # the user's code or torch raised: a finding, not a traceback
        torch.set_grad_enabled(grad_mode)
        return Recording(z=z, z_grad=None, out=None, loss_value=math.nan,
                         out_requires_grad=False, loss_requires_grad=False, probes=tr.stats,
                         hygiene=Hygiene(
                             hooks_registered=tr.hooks_registered, hooks_left=tr.hooks_left or 0,
                             grad_mode_before=tr.grad_mode_before,
                             grad_mode_after=bool(tr.grad_mode_after),
                             sampler_changed_grad_mode=False),
                         graph=StepGraph(raw_skipped="the sampler raised"), timings=timings,
                         raised=raised_record(exc, phase[0], tr))
    hygiene = Hygiene(
        hooks_registered=tr.hooks_registered, hooks_left=tr.hooks_left or 0,
        grad_mode_before=tr.grad_mode_before, grad_mode_after=bool(tr.grad_mode_after),
        sampler_changed_grad_mode=changed,
    )
    return Recording(z=z, z_grad=z_grad, out=out.detach(), loss_value=loss_value,
                     out_requires_grad=out_rg, loss_requires_grad=loss_rg, probes=tr.stats,
                     hygiene=hygiene, graph=step_graph, raw_graph=raw_full, timings=timings,
                     unit_s=timings["forward_s"] + (grad_s if loss_rg else 0.0))


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


# -- stage 5: judge (the report the checks read) --------------------------------------------------

def assemble(rec: Recording, loss: Loss, *, mode: str, numeric: NumericResult | None,
             optim: OptimResult | None, thresholds: dict[str, float],
             sample_fn: Any) -> FlowReport:
    """The plain report of the recorded stages (not judged yet: :func:`judge`)."""
    out_stats = next((p for p in rec.probes if p.kind == "output"), None)
    report = FlowReport(
        mode=mode, objective=loss.objective, loss_description=loss.description,
        loss=rec.loss_value if rec.raised is None else None,
        output_requires_grad=rec.out_requires_grad,
        loss_requires_grad=rec.loss_requires_grad,
        output_grad_max_abs=out_stats.max_abs if out_stats else None,
        probes=rec.probes, numeric=numeric, optim=optim, hygiene=rec.hygiene,
        expect={"step_noise": modes.MODES[mode].step_noise}, graph=rec.graph,
        thresholds=thresholds,
        handles={"z0": rec.z, "z0_grad": rec.z_grad, "output": rec.out,
                 "leaves": list(getattr(sample_fn, "leaves", [])), "raw_graph": rec.raw_graph,
                 "loss_of": loss.of},
    )
    out = rec.out
    report.raised = rec.raised
    if out is not None and out.numel() <= 65536 and out.ndim == 4 and out.shape[1] in (1, 3):
        report.samples = [[round(v, 4) for v in row] for row in
                          out.double().cpu().reshape(out.shape[0], -1).tolist()]
        report.expect["sample_shape"] = list(out.shape[1:])
    elif out is not None and out.ndim == 5:
        # video [B, C, T, H, W]: each sample's frames side by side (its first channel, or RGB),
        # a strip per sample
        b, c, t, h, w = out.shape
        ch = 3 if c == 3 else 1
        strip = out[:8, :ch].double().cpu().permute(0, 1, 3, 2, 4).reshape(min(b, 8), ch, h,
                                                                              t * w)
        if strip[0].numel() <= 65536:
            report.samples = [[round(v, 4) for v in row] for row in
                              strip.reshape(strip.shape[0], -1).tolist()]
            report.expect["sample_shape"] = [ch, h, t * w]
            report.expect["frames"] = t
    return report


# -- stage 3b: a float64 shadow run --------------------------------------------------------------

def shadow_check(sample_fn: Any, z0: torch.Tensor, loss: Loss, *, seed: int,
                 policy: Local) -> NumericResult | None:
    """Below float64 one random direction cannot prove a gradient right (a 2% error hides along
    most directions at float32's tolerance). Where the sampler can be cast (``at_dtype``), the
    same sampler runs in float64: one forward + backward for its gradient, then the float64
    numeric check (2 forward passes per step size), which catches a 2% error with >= 99%
    probability. None where it cannot be cast."""
    shadow = sample_fn.at_dtype(torch.float64)
    if shadow is None:
        return None
    from .locate.provenance import Provenance

    run64 = runner(shadow, seed, z0.device)
    z = z0.detach().to(torch.float64).clone().requires_grad_(True)
    # its forward under the provenance mode: a sampler that computes in lower precision inside
    # (a .float() cast, a float32 scheduler step) gives no float64 evidence to judge by
    with trace() as tr, torch.enable_grad():
        prov = Provenance(tr, [z])
        with prov:
            value = loss.of(run64(z))
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


# -- stage 6: locate --------------------------------------------------------------------------------

def source_around(location: str | None, context: int = 3) -> tuple[list[str], int | None]:
    """The lines of the user's source around ``path:line`` (``context`` either side), and the
    number of the first; nothing when the file cannot be read (a REPL, a notebook cell)."""
    import linecache

    if not location or ":" not in location:
        return [], None
    path, _, line = location.rpartition(":")
    if not line.isdigit() or path.startswith("<"):
        return [], None
    n = int(line)
    first = max(1, n - context)
    lines = [linecache.getline(path, i).rstrip("\n") for i in range(first, n + context + 1)]
    while lines and not lines[-1].strip():
        lines.pop()
    if not any(x.strip() for x in lines):
        return [], None
    return lines, first


def locate_stage(sample_fn: Callable[[torch.Tensor], Any], z0: torch.Tensor,
                 run: Callable[[torch.Tensor], torch.Tensor], loss: Loss, rec: Recording,
                 report: FlowReport, *, locate: str, scan_randomness: bool, scan_bias: bool,
                 seed: int, policy: Local) -> None:
    """Name where and why the gradient breaks (one more forward pass under provenance tracking,
    and a backward pass where a gradient became zero or non-finite), only when a check failed,
    when asked, or to scan a custom sampler for fresh randomness; then
    :func:`remeasure_at_working_precision`. ``report`` comes judged on the evidence so far (the
    locator explains that verdict); it is updated in place, and judged at the end."""
    from .locate import locate as run_locator, symptoms

    why = symptoms(report) if report.failed or locate != "never" else []
    if not (locate == "always" or (locate == "auto" and (policy.any(bool(report.failed))
                                                         or scan_randomness or scan_bias))):
        return
    t0 = time.perf_counter()
    reason = "; ".join(why) or ("asked (--locate always)" if locate == "always" else "; ".join(
        ["a scan for fresh randomness (a custom sampler)"] * bool(scan_randomness)
        + ["a scan for values that leave autograd and come back ("
           + ("no numeric check" if report.numeric is None else
              f"{str(rec.z.dtype).replace('torch.', '')}: the numeric check alone cannot prove "
              f"the gradient right") + ")"] * bool(scan_bias)))
    report.locator = run_locator(sample_fn, z0, loss.of, report,
                                 run_ctx=lambda: seeded(seed, z0.device), reason=reason,
                                 seed=seed, rank=policy.rank, policy=policy)
    report.timings["locate_s"] = time.perf_counter() - t0
    loc = report.locator
    for ev in [loc.primary, loc.bias, *loc.events[:8]] if loc else []:
        if ev is not None and not ev.source:
            ev.source, ev.source_line = source_around(ev.location)
    remeasure_at_working_precision(run, loss, rec, report, seed=seed, policy=policy)


def remeasure_at_working_precision(run: Callable[[torch.Tensor], torch.Tensor], loss: Loss,
                                   rec: Recording, report: FlowReport, *, seed: int,
                                   policy: Local) -> None:
    """A sampler that computes in lower precision inside than z0's dtype (diffusers' schedulers
    step in float32), as the provenance pass saw, gets the numeric check at that precision:
    measured again with that dtype's step sizes (2 forward passes per step size), never judged
    looser on the old measurements. Updates ``report.numeric`` in place."""
    z = rec.z
    low = report.locator.lowest_dtype
    eps = policy.max(torch.finfo(getattr(torch, low) if low else z.dtype).eps)  # every rank alike
    num = report.numeric
    if num is not None and not num.skipped and eps > torch.finfo(z.dtype).eps:
        t0 = time.perf_counter()
        was_failing = not report.check("numeric_directional").passed
        working = _DTYPE_OF_EPS.get(eps) or getattr(torch, low or "float32")
        report.numeric = numeric_check(run, loss, rec, seed=seed, policy=policy, working=working)
        report.timings["numeric_s"] = report.timings.get("numeric_s", 0.0) + \
            time.perf_counter() - t0
        if was_failing and numeric_directional(report).passed and \
                report.locator.primary is None:
            report.locator.note = None  # it explained a mismatch that was round-off


# -- the diagnosis ----------------------------------------------------------------------------------

class _Run:
    """One diagnosis in progress: the sampler as it is called (allowed, counted), the seeded
    runner, the process policy, and the ledger of every stage's passes and seconds."""

    def __init__(self, sample_fn: Any, z0: torch.Tensor, opts: Options) -> None:
        self.allowing = None
        if opts.allow_grad:  # every pass runs with the sampler's grad-disabling sites neutralised
            from .allow import Allowing

            sample_fn = self.allowing = Allowing(sample_fn)
        self.sample_fn = self.counted = Counted(sample_fn)
        self.policy = opts.policy or current(getattr(sample_fn, "shard_dim", 0))
        self.run = runner(self.sample_fn, opts.seed, z0.device)
        self.calls: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.t_start = time.perf_counter()

    def stage(self, name: str, fn: Callable[[], Any], timed: bool = True) -> Any:
        """``fn()`` as stage ``name``: its sampler calls counted, its seconds noted."""
        t0, c0 = time.perf_counter(), self.counted.calls
        out = fn()
        if timed:
            self.timings[f"{name}_s"] = time.perf_counter() - t0
        self.calls[name] = self.calls.get(name, 0) + self.counted.calls - c0
        return out

    def allowed_sites(self) -> list[GradSite] | None:
        if self.allowing is None:
            return None
        return [GradSite(s.api, s.function, s.location, s.count)
                for s in self.allowing.sites or []]

    def finish(self, report: FlowReport, rec: Recording, checks: str) -> FlowReport:
        """The judged report with its timings, cost and notes, merged across processes."""
        self.timings["total_s"] = time.perf_counter() - self.t_start
        report.timings = self.timings
        report.cost = _ledger(self.timings, self.calls, rec, report, checks)
        report.sampler = getattr(self.sample_fn, "description", None)
        report.notes = [str(n) for n in getattr(self.sample_fn, "notes", ())]
        report = self.policy.merge(report, self.sample_fn)
        observers.notify(report)
        return report


def judge(report: FlowReport) -> FlowReport:
    """The checks (pure: :func:`gradcheck.checks.run_checks`) on the evidence gathered."""
    report.checks = run_checks(report)
    return report


def baseline_stage(r: _Run, z0: torch.Tensor, opts: Options) -> Loss:
    """The loss (stage 1); a sampler that raises while its baseline is drawn gets a stand-in:
    the record pass meets the exception again and says where."""
    try:
        return build_loss(r.run, z0, loss_fn=opts.loss_fn, target=opts.target,
                          objective=opts.objective, seed=opts.seed, policy=r.policy,
                          random_target=random_target(opts.checks, r.policy.world))
    except GradcheckError:
        raise
    except Exception:  # noqa: BLE001 - reported by the record pass, which meets it again
        return Loss(lambda out: out.double().square().mean(), "(no baseline: the sampler raised "
                    "while drawing it)", "maximize")


def facts(opts: Options, z0: torch.Tensor, rec: Recording, r: _Run) -> Facts:
    return Facts(level=opts.checks, dtype=str(z0.dtype).replace("torch.", ""),
                 unit_s=rec.unit_s, world=r.policy.world, numeric=opts.numeric,
                 shadow=opts.shadow, custom_loss=opts.loss_fn is not None,
                 castable=hasattr(r.sample_fn, "at_dtype"), optim_steps=opts.optim_steps,
                 step_noise=modes.MODES[opts.mode].step_noise,
                 scan_randomness=opts.scan_randomness, budget_s=SHADOW_BUDGET_S)


def numeric_stage(r: _Run, p: Plan, loss: Loss, rec: Recording, shadow_num: Any,
                  seed: int) -> NumericResult:
    """The finite-difference check at working precision (stage 3): one direction where a float64
    shadow carried the power, else as many as the dtype's power needs (and the plan allows)."""
    judged = shadow_num is not None and shadow_num.skipped is None
    num = numeric_check(r.run, loss, rec, seed=seed, policy=r.policy,
                        directions=p.directions(judged), full_sweep=p.full_sweep,
                        one_sided=p.one_sided)
    prec = getattr(torch, num.working_dtype or num.dtype, None)
    if p.expensive and not judged and DIRECTIONS.get(prec, 1) > num.directions:
        num.limited = (f"the recorded pass takes {rec.unit_s:.1f} s, so the default checks "
                       f"skip the float64 shadow and further directions; --checks full buys "
                       f"them")
    return num


def optim_stage(r: _Run, p: Plan, loss: Loss, rec: Recording, num: Any, shadow_num: Any,
                lr: float) -> OptimResult:
    """Adam steps on a copy of z0 (stage 4). The default level's one step pays its forward pass
    only where the numeric check has not already verified the gradient in float64 (it would then
    only say whether lr suits the loss's curvature, nothing about the gradient)."""
    warm = warm_optimizer()
    if warm:
        r.timings["setup_s"] = warm  # once per process, not the diagnosis's cost
    why = None if p.optim_asked else verified(num, shadow_num)
    return r.stage("optim", lambda: optimizer_probe(r.run, loss, rec, steps=p.optim_steps,
                                                     lr=lr, policy=r.policy, unmeasured=why))


def diagnose(sample_fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor,
             **options: Any) -> FlowReport:
    """Diagnose whether the gradient of a loss on ``sample_fn(z0)`` reaches z0, and how.

    ``sample_fn``: ``z0 -> output``, its denoiser instrumented (:func:`gradcheck.instrument`;
    the built-in :class:`~gradcheck.sampling.ResSampler` is). ``z0``: the initial noise, not
    modified (a leaf copy of it is differentiated: ``report.handles["z0"]``). ``options``: the
    fields of :class:`gradcheck.options.Options` (``loss_fn``, ``target``, ``mode``, ``seed``,
    ``checks``, ``allow_grad``, ...; each documented there), validated once. The stages run in
    order, each returning what it found; :func:`gradcheck.plan.plan` decides from the recorded
    pass which further evidence to buy; the checks judge the evidence at the end. Returns a
    :class:`FlowReport`; ``.passed`` is the verdict.
    """
    opts = Options.of(options).validate(sample_fn)
    z0 = validate_z0(z0)
    r = _Run(sample_fn, z0, opts)
    loss = r.stage("baseline", lambda: baseline_stage(r, z0, opts), timed=False)
    rec = r.stage("record", lambda: record(
        r.sample_fn, z0, loss, seed=opts.seed, capture_graph=opts.capture_graph,
        raw_graph_cap=opts.raw_graph_cap, keep_raw_graph=opts.keep_raw_graph, policy=r.policy,
        op_detail=opts.op_detail, grad_weights=opts.grad_weights), timed=False)
    r.timings.update({**loss.timings, **rec.timings})
    if rec.raised is not None:  # nothing else can run: the report says where and what
        return r.finish(judge(assemble(rec, loss, mode=opts.mode, numeric=None, optim=None,
                                       sample_fn=r.sample_fn, thresholds=opts.thresholds)),
                        rec, opts.checks)
    p = plan(facts(opts, z0, rec, r))
    shadow_num = r.stage("shadow", lambda: shadow_check(
        r.sample_fn, z0, loss, seed=opts.seed, policy=r.policy)) if p.shadow else None
    num = r.stage("numeric", lambda: numeric_stage(
        r, p, loss, rec, shadow_num, opts.seed)) if p.numeric else None
    opt = optim_stage(r, p, loss, rec, num, shadow_num, opts.lr) if p.optim_steps > 0 else None
    report = assemble(rec, loss, mode=opts.mode, numeric=num, optim=opt, sample_fn=r.sample_fn,
                      thresholds=opts.thresholds)
    report.numeric_shadow, report.allowed_grad = shadow_num, r.allowed_sites()
    report.timings = r.timings
    # a stationary loss (on any rank: every rank takes part): is the path itself alive?
    if r.policy.any(report.output_requires_grad and report.output_grad_max_abs == 0.0):
        report.path_probe = r.stage("path_probe", lambda: probe_path(
            r.run, rec, seed=opts.seed, policy=r.policy))
    r.stage("locate", lambda: locate_stage(
        r.sample_fn, z0, r.run, loss, rec, judge(report), locate=opts.locate,
        scan_randomness=p.scan_randomness, scan_bias=p.scan_bias, seed=opts.seed,
        policy=r.policy), timed=False)
    return r.finish(judge(report), rec, opts.checks)


#: the default level's float64 shadow and its 7 working-precision directions are for samplers
#: whose recorded forward+backward takes at most this long; a slower one gets one direction,
#: its power stated, and checks="full" buys the rest
SHADOW_BUDGET_S = 2.0

#: what each ``checks`` level runs (see :mod:`gradcheck.plan`)
CHECK_LEVELS = LEVELS


def _ledger(timings: dict[str, float], calls: dict[str, int], rec: Recording,
            report: FlowReport, checks: str) -> Cost:
    """The diagnosis's cost per stage, from its timings and its counted sampler calls."""
    backwards = {"record": 1 if rec.loss_requires_grad else 0,
                 "shadow": 1 if "shadow_s" in timings else 0,
                 "optim": max(0, len((report.optim.losses if report.optim else [None])) - 2),
                 "path_probe": 1 if "path_probe_s" in timings else 0,
                 "locate": (report.locator.bisection.backwards
                            if report.locator and report.locator.bisection else 0)}
    seconds = {"baseline": timings.get("baseline_s", 0.0),
               "record": timings.get("forward_s", 0.0) + timings.get("backward_s", 0.0),
               "shadow": timings.get("shadow_s", 0.0), "numeric": timings.get("numeric_s", 0.0),
               "optim": timings.get("optim_s", 0.0),
               "path_probe": timings.get("path_probe_s", 0.0),
               "locate": timings.get("locate_s", 0.0)}
    rows = [(k, calls.get(k, 0), backwards.get(k, 0), t) for k, t in seconds.items()
            if t > 0 or calls.get(k, 0)]
    cost = cost_of(rows, rec.unit_s, checks)
    cost.unit_op_detail = bool(rec.graph.detail)
    return cost
