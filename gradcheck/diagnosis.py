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

import dataclasses
import time
from typing import Any, Callable

import torch

from . import modes, observers
from .checks import run_checks
from .checks_numbers import within_tolerance
from .errors import GradcheckError, InputError
from .numeric import DIRECTIONS, SETTINGS
from .options import Options
from .plan import SHADOW_BUDGET_S as PLAN_BUDGET_S, Facts, Plan, plan, random_target
from .policy import Local, current
from .rng import seeded
from .records import (CompiledCheck, Cost, FlowReport, GradSite, LocatorResult, NumericResult, OptimResult,
                      PathProbe, Raised, StageCost)
from .evidence import (  # noqa: F401 - the stages, importable from here as before
    loss_at, numeric_check, optimizer_probe, probe_path, remeasure_at_working_precision,
    shadow_check, source_around, straddles, verified, warm_optimizer,
)
from .backward_errors import explain as explain_backward
from .compiled import compiled_run, eager_compiled
from . import progress
from .reentrant import non_reentrant
from .recording import (  # noqa: F401 - likewise
    Counted, Loss, Recording, build_loss, raised_record, record, runner,
)


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


def cost_of(stages: list[tuple[str, int, int, float]], unit_s: float, checks: str) -> Cost:
    """The :class:`Cost` of ``(stage, forwards, backwards, seconds)`` rows."""
    unit = unit_s if unit_s > 0 else float("nan")
    rows = [StageCost(stage=n, forwards=f, backwards=b, seconds=t, units=t / unit)
            for n, f, b, t in stages]
    return Cost(unit_s=unit_s, stages=rows, total_units=sum(r.units for r in rows),
                forwards=sum(r.forwards for r in rows), backwards=sum(r.backwards for r in rows),
                checks=checks)


# -- stage 5: the report the checks read ------------------------------------------------------------

def assemble(rec: Recording, loss: Loss, *, mode: str, numeric: NumericResult | None,
             optim: OptimResult | None, thresholds: dict[str, float], sample_fn: Any,
             shadow: NumericResult | None = None, path_probe: PathProbe | None = None,
             allowed: list[GradSite] | None = None,
             timings: dict[str, float] | None = None) -> FlowReport:
    """The plain report of what the stages found (not judged yet: :func:`judge`)."""
    report = FlowReport(
        mode=mode, objective=loss.objective, loss_description=loss.description,
        loss=rec.loss_value if rec.raised is None else None,
        output_requires_grad=rec.out_requires_grad,
        loss_requires_grad=rec.loss_requires_grad,
        output_grad_max_abs=_output_max_abs(rec),
        probes=rec.probes, numeric=numeric, optim=optim, hygiene=rec.hygiene,
        expect={"step_noise": modes.MODES[mode].step_noise}, graph=rec.graph,
        thresholds=thresholds, numeric_shadow=shadow, path_probe=path_probe,
        allowed_grad=allowed, timings=timings if timings is not None else {},
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


def _output_max_abs(rec: Recording) -> float | None:
    out = next((p for p in rec.probes if p.kind == "output"), None)
    return out.max_abs if out else None


def locate_stage(sample_fn: Callable[[torch.Tensor], Any], z0: torch.Tensor,
                 run: Callable[[torch.Tensor], torch.Tensor], loss: Loss, rec: Recording,
                 report: FlowReport, *, locate: str, scan_randomness: bool, scan_bias: bool,
                 seed: int, policy: Local) -> tuple[LocatorResult | None, NumericResult | None]:
    """Name where and why the gradient breaks (one more forward pass under provenance tracking,
    and a backward pass where a gradient became zero or non-finite), only when a check failed,
    when asked, or to scan a custom sampler for fresh randomness; then
    :func:`remeasure_at_working_precision`. Returns (the locator's result, the numeric check
    measured again at the working precision; None: not run, unchanged). ``report`` is the
    evidence so far; the locator reads which checks its evidence fails (run here on a copy, as
    what to look for: the report itself is judged once, at the end, with what this returns)."""
    from .locate import locate as run_locator, symptoms

    report = dataclasses.replace(report, checks=run_checks(report))
    why = symptoms(report) if report.failed or locate != "never" else []
    if not (locate == "always" or (locate == "auto" and (policy.any(bool(report.failed))
                                                         or scan_randomness or scan_bias))):
        return None, None
    t0 = time.perf_counter()
    reason = "; ".join(why) or ("asked (--locate always)" if locate == "always" else "; ".join(
        ["a scan for fresh randomness (a custom sampler)"] * bool(scan_randomness)
        + ["a scan for values that leave autograd and come back ("
           + ("no numeric check" if report.numeric is None else
              f"{str(rec.z.dtype).replace('torch.', '')}: the numeric check alone cannot prove "
              f"the gradient right") + ")"] * bool(scan_bias)))
    loc = run_locator(sample_fn, z0, loss.of, report, run_ctx=lambda: seeded(seed, z0.device),
                      reason=reason, seed=seed, rank=policy.rank, policy=policy)
    report.timings["locate_s"] = time.perf_counter() - t0
    for ev in [loc.primary, loc.bias, *loc.events[:8]]:
        if ev is not None and not ev.source:
            ev.source, ev.source_line = source_around(ev.location)
    return loc, remeasure_at_working_precision(run, loss, rec, report, loc, seed=seed,
                                               policy=policy)


# -- the diagnosis ----------------------------------------------------------------------------------

class _Run:
    """One diagnosis in progress: the sampler as it is called (allowed, counted), the seeded
    runner, the process policy, and the ledger of every stage's passes and seconds."""

    def __init__(self, sample_fn: Any, z0: torch.Tensor, opts: Options) -> None:
        self.allowing = None
        self.reentrant: Any = None  # reentrant.NonReentrant: its note goes in the report
        self.compiled: Any = None  # compiled.EagerCompiled: likewise
        if opts.allow_grad:  # every pass runs with the sampler's grad-disabling sites neutralised
            from .allow import Allowing

            sample_fn = self.allowing = Allowing(sample_fn)
        self.sample_fn = self.counted = Counted(sample_fn)
        self.policy = opts.policy or current(getattr(sample_fn, "shard_dim", 0))
        self.run = runner(self.sample_fn, opts.seed, z0.device)
        self.calls: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.pass_errors: list[Raised] = []
        self.t_start = time.perf_counter()

    def stage(self, name: str, fn: Callable[[], Any], timed: bool = True,
              guarded: bool = False) -> Any:
        """``fn()`` as stage ``name``: its sampler calls counted, its seconds noted. A
        ``guarded`` stage (a pass gradcheck adds) that meets an exception from the sampler
        returns None and notes it (``pass_errors``): a finding, never an exception."""
        t0, c0 = time.perf_counter(), self.counted.calls
        progress.event("stage", name)
        try:
            out = fn()
        except GradcheckError:
            raise
        except Exception as exc:  # noqa: BLE001 - the sampler's own error in an added pass
            if not guarded:
                raise
            self.pass_errors.append(raised_record(exc, name, None))
            out = None
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
        report.notes = [str(n) for n in getattr(self.sample_fn, "notes", ())] + [
            n for n in [self.reentrant.note if self.reentrant else None,
                        self.compiled.note if self.compiled else None] if n]
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
                 scan_randomness=opts.scan_randomness, budget_s=SHADOW_BUDGET_S,
                 foreign_denoiser=_foreign_denoiser(r.sample_fn))


def _foreign_denoiser(sample_fn: Any) -> bool:
    """The built-in sampler (it has a known mode) around a denoiser that is not gradcheck's own:
    code the provenance scan should see, as it sees a custom sampler's."""
    for _ in range(4):  # through gradcheck's own wrappers (Counted, Allowing)
        if hasattr(sample_fn, "denoiser") or not hasattr(sample_fn, "inner"):
            break
        sample_fn = sample_fn.inner
    den = getattr(sample_fn, "denoiser", None)
    if den is None or not hasattr(sample_fn, "mode"):
        return False
    den = getattr(den, "inner", den)
    return not type(den).__module__.startswith("gradcheck.")


def numeric_stage(r: _Run, p: Plan, loss: Loss, rec: Recording, shadow_num: Any,
                  seed: int) -> NumericResult:
    """The finite-difference check at working precision (stage 3): one direction where a float64
    shadow carried the power, else as many as the dtype's power needs (and the plan allows)."""
    judged = shadow_num is not None and shadow_num.skipped is None
    num = numeric_check(r.run, loss, rec, seed=seed, policy=r.policy,
                        directions=p.directions(judged), full_sweep=p.full_sweep,
                        one_sided=p.one_sided)
    if num.skipped is None and num.abs_error is not None and not within_tolerance(num):
        # reverse mode disagrees: is the sampler the same function of z0 at every call?
        num.replayed = loss_at(r.run, loss, r.policy)(rec.z)
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
                                                     lr=lr, policy=r.policy, unmeasured=why),
                   guarded=True)


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
    # the passes differentiate with autograd.grad; compiled code runs as its eager original
    with non_reentrant() as reentrant, eager_compiled() as compiled:
        r = _Run(sample_fn, z0, opts)
        r.reentrant, r.compiled = reentrant, compiled
        return _diagnose(r, z0, opts)


def _diagnose(r: _Run, z0: torch.Tensor, opts: Options) -> FlowReport:
    loss = r.stage("baseline", lambda: baseline_stage(r, z0, opts), timed=False)
    rec = r.stage("record", lambda: record(
        r.sample_fn, z0, loss, seed=opts.seed, capture_graph=opts.capture_graph,
        raw_graph_cap=opts.raw_graph_cap, keep_raw_graph=opts.keep_raw_graph, policy=r.policy,
        op_detail=opts.op_detail, grad_weights=opts.grad_weights), timed=False)
    r.timings.update({**loss.timings, **rec.timings})
    if rec.raised is not None:  # nothing else can run: the report says where and what
        if rec.raised.phase == "backward":  # which forward line made the failing node
            r.stage("explain", lambda: explain_backward(r.run, z0, loss.of, rec.raised),
                    guarded=True)
        return r.finish(judge(assemble(rec, loss, mode=opts.mode, numeric=None, optim=None,
                                       sample_fn=r.sample_fn, thresholds=opts.thresholds)),
                        rec, opts.checks)
    p = plan(facts(opts, z0, rec, r))
    shadow_num = r.stage("shadow", lambda: shadow_check(
        r.sample_fn, z0, loss, seed=opts.seed, policy=r.policy, per_call=p.full_sweep),
        guarded=True) \
        if p.shadow else None
    num = r.stage("numeric", lambda: numeric_stage(
        r, p, loss, rec, shadow_num, opts.seed), guarded=True) if p.numeric else None
    opt = optim_stage(r, p, loss, rec, num, shadow_num, opts.lr) if p.optim_steps > 0 else None
    # a stationary loss (on any rank: every rank takes part): is the path itself alive?
    dead = r.policy.any(rec.out_requires_grad and _output_max_abs(rec) == 0.0)
    pp = r.stage("path_probe", lambda: probe_path(r.run, rec, seed=opts.seed, policy=r.policy),
                 guarded=True) if dead else None
    report = assemble(rec, loss, mode=opts.mode, numeric=num, optim=opt, sample_fn=r.sample_fn,
                      thresholds=opts.thresholds, shadow=shadow_num, path_probe=pp,
                      allowed=r.allowed_sites(), timings=r.timings)
    loc, remeasured = r.stage("locate", lambda: locate_stage(
        r.sample_fn, z0, r.run, loss, rec, report, locate=opts.locate,
        scan_randomness=p.scan_randomness, scan_bias=p.scan_bias, seed=opts.seed,
        policy=r.policy), timed=False, guarded=True) or (None, None)
    comp = r.stage("compiled", lambda: compiled_stage(r, loss, rec), guarded=True) \
        if r.compiled is not None and r.compiled.regions else None
    report = dataclasses.replace(report, locator=loc, pass_errors=r.pass_errors,
                                 numeric=remeasured or report.numeric, compiled=comp)
    return r.finish(judge(report), rec, opts.checks)


def compiled_stage(r: _Run, loss: Loss, rec: Recording) -> CompiledCheck:
    """torch.compile'd code ran eagerly in every pass so far: one forward+backward of the
    sampler as the user runs it (compiled), its dL/dz0 against the diagnosed one."""
    rtol = SETTINGS.get(rec.z.dtype, SETTINGS[torch.float32])[1]
    c = CompiledCheck(regions=r.compiled.regions, rtol=rtol, loss_eager=rec.loss_value)
    value, grad = compiled_run(r.run, loss.of, rec.z)
    c.loss = r.policy.sum(value)
    eager = rec.z_grad
    if grad is None or eager is None:
        c.rel_error = 0.0 if grad is None and eager is None else 1.0
        return c
    diff = r.policy.sum(float((grad.double() - eager.double()).square().sum())) ** 0.5
    norm = r.policy.sum(float(eager.double().square().sum())) ** 0.5
    c.rel_error = diff / norm if norm > 0 else (0.0 if diff == 0 else 1.0)
    return c


#: the plan's budget for the default level (:data:`gradcheck.plan.SHADOW_BUDGET_S`), read here
#: at each diagnosis so that it can be set for a process
SHADOW_BUDGET_S = PLAN_BUDGET_S


def _ledger(timings: dict[str, float], calls: dict[str, int], rec: Recording,
            report: FlowReport, checks: str) -> Cost:
    """The diagnosis's cost per stage, from its timings and its counted sampler calls."""
    backwards = {"record": 1 if rec.loss_requires_grad else 0,
                 "shadow": 1 if "shadow_s" in timings else 0,
                 "optim": max(0, len((report.optim.losses if report.optim else [None])) - 2),
                 "path_probe": 1 if "path_probe_s" in timings else 0,
                 "locate": (report.locator.bisection.backwards
                            if report.locator and report.locator.bisection else 0)}
    sh = report.numeric_shadow
    per_call = sum(c.get("seconds", 0.0) for c in (sh.calls if sh is not None else []))
    seconds = {"baseline": timings.get("baseline_s", 0.0),
               "record": timings.get("forward_s", 0.0) + timings.get("backward_s", 0.0),
               "shadow": timings.get("shadow_s", 0.0) - per_call, "per_call": per_call,
               "numeric": timings.get("numeric_s", 0.0),
               "optim": timings.get("optim_s", 0.0),
               "path_probe": timings.get("path_probe_s", 0.0),
               "locate": timings.get("locate_s", 0.0)}
    rows = [(k, calls.get(k, 0), backwards.get(k, 0), t) for k, t in seconds.items()
            if t > 0 or calls.get(k, 0)]
    cost = cost_of(rows, rec.unit_s, checks)
    cost.unit_op_detail = bool(rec.graph.detail)
    cost.shadow_copy_bytes = sh.copy_bytes if sh is not None else None
    return cost
