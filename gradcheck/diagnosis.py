"""``diagnose(sample_fn, z0)``: run a sampler under a trace, back-propagate, judge.

The run records (torch); :mod:`gradcheck.checks` judges the record (pure); renderers draw it.
"""
from __future__ import annotations

import contextlib
import re
import time
import warnings
from typing import Any, Callable, Iterator

import torch

from . import graph, observers
from .checks import numeric_directional, run_checks
from .errors import ConfigError, GradcheckError, InputError
from .numeric import directional_check
from .probes import probe, trace
from .records import FlowReport, Hygiene, OptimResult, StepGraph

#: What each noise mode promises about the step noise (read by the checks).
#: machine epsilon -> floating dtype (the precision a sampler computes in, agreed across ranks)
_DTYPE_OF_EPS = {torch.finfo(d).eps: d for d in (torch.float64, torch.float32, torch.bfloat16,
                                                 torch.float16)}

STEP_NOISE_EXPECTATION = {
    "default": "none",
    "learnable_step_noise": "connected",
    "fresh_noise": "disconnected",
    "independent_leaves": "leaves",
    # a sampler of the user's own (no .mode): what its step noise should be is unknown, so the
    # provenance pass scans it for fresh randomness (a warning, not a failure)
    "custom": "unknown",
}


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global RNG (CPU, and the CUDA device if any) and seed it, so a sampler that draws
    from the global generator is the same function of z0 on every call."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(a, b.to(a.dtype))


def diagnose(
    sample_fn: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    target: torch.Tensor | None = None,
    objective: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    numeric: bool = True,
    optim_steps: int = 3,
    lr: float = 1e-2,
    raw_graph_cap: int = 600,
    keep_raw_dot: bool = False,
    locate: str = "auto",
    capture_graph: bool = True,
    vanishing_rel: float = 1e-8,
    exploding_ratio: float = 1e4,
    scan_randomness: bool | None = None,
) -> FlowReport:
    """Diagnose whether the gradient of a loss on ``sample_fn(z0)`` reaches z0, and how.

    Args:
        sample_fn: ``z0 -> output``; instrument its denoiser with :func:`gradcheck.instrument`
            (the built-in :class:`~gradcheck.sampling.ResSampler` is instrumented already).
        z0: the initial noise. Not modified: a leaf copy of it is differentiated and returned in
            ``report.handles["z0"]``.
        loss_fn: ``output -> scalar``. Default: MSE between the output and ``target``; without a
            target, MSE to a fixed baseline: the output of the same sampler (no grad) from a
            *different* seeded noise draw (a baseline from the same z0 would equal the output and
            put the loss at a stationary point with exactly zero gradient).
        target: a tensor to compare the output with (MSE).
        objective: ``"minimize"`` or ``"maximize"``; default maximize for the baseline loss (the
            originating experiment: push the output away from the baseline), minimize otherwise.
        mode: the noise mode, which sets what is expected of the step noise; default
            ``sample_fn.mode``, else ``"custom"``: a sampler of the user's own, whose step noise
            is scanned for fresh randomness (reported as a warning).
        seed: seeds the global RNG around every sampler call, the baseline draw and the numeric
            direction.
        numeric: run the finite-difference check (2 forward passes per step size).
        optim_steps: Adam steps on a copy of z0 for the optimizer checks (0 skips them).
        lr: Adam's learning rate for those steps.
        raw_graph_cap: keep the op-level autograd graph (torchviz DOT) in the record only up to
            this many nodes; bigger graphs take minutes to lay out.
        keep_raw_dot: also keep the op-level DOT of a graph above the cap, in
            ``report.handles["raw_dot"]`` (not serialised; ``gradcheck run`` writes it to a file).
        locate: ``auto`` re-runs the forward pass under provenance tracking to name where and why
            the gradient breaks, only when a check found a problem; ``always``; ``never``.
        capture_graph: record the autograd graph collapsed onto the probes (the report's step
            graph); one Python walk of the graph, about 10 us per autograd node. Without it, the
            backward differentiates z0 and the step-noise leaves only.
        vanishing_rel: a probe whose |g| is below this fraction of the output's is vanishing.
        exploding_ratio: a state whose |g| is more than this many times the next step's is
            exploding.
        scan_randomness: run the provenance pass (one more forward) to find fresh random draws
            mixed into the state even when every check passes; default: for mode ``custom``.
            ``locate="never"`` turns it off.

    Returns:
        A :class:`FlowReport` with probes, numbers and findings; ``.passed`` is the verdict.
    """
    mode = mode or getattr(sample_fn, "mode", None) or "custom"
    if locate not in ("auto", "always", "never"):
        raise ConfigError(f"locate must be 'auto', 'always' or 'never', got {locate!r}")
    if mode not in STEP_NOISE_EXPECTATION:
        raise ConfigError(
            f"unknown mode {mode!r}; choose one of {', '.join(STEP_NOISE_EXPECTATION)}"
        )
    z0 = validate_z0(z0)
    device = z0.device
    timings: dict[str, float] = {}
    from . import distributed

    dctx = distributed.context()  # None outside a process group of 2+ ranks
    red = dctx.sum if dctx is not None else (lambda x: x)
    any_rank = dctx.any if dctx is not None else bool  # decisions every rank takes together
    # under torch.distributed each rank holds a shard of z0: the built-in losses are this rank's
    # part of the global mean (sum over the shard / global element count), so dL/dz0 of every
    # shard is the single-process gradient of the whole batch; a loss_fn must do the same
    mse = _mse
    if dctx is not None:
        n_global: list[float] = []  # the global element count, summed once (a collective)

        def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if not n_global:
                n_global.append(red(float(a.numel())))
            return (a - b.to(a.dtype)).square().sum() / n_global[0]
    t_start = time.perf_counter()

    def run(z: torch.Tensor) -> torch.Tensor:
        with seeded(seed, device):
            return _as_output(sample_fn(z))

    # -- the loss -------------------------------------------------------------------------
    if loss_fn is not None:
        loss_of, desc, default_obj = loss_fn, "user loss_fn(output)", "minimize"
    elif target is not None:
        tgt = target.detach()
        loss_of, desc, default_obj = (lambda out: mse(out, tgt)), "MSE(output, target)", "minimize"
    else:
        from .sampling.noise import sub_seed

        # its own stream: never the user's randn(seed) draw (and each rank's shard its own)
        base_seed = sub_seed(seed, 4, dctx.rank if dctx is not None else 0)
        g = torch.Generator().manual_seed(base_seed)
        z_base = torch.randn(z0.shape, generator=g, dtype=torch.float64).to(z0)
        t0 = time.perf_counter()
        with torch.no_grad():
            baseline = run(z_base).detach()
        timings["baseline_s"] = time.perf_counter() - t0
        loss_of = lambda out: mse(out, baseline)  # noqa: E731
        desc = (f"MSE(output, baseline); baseline = the sampler's output from independent "
                f"noise (derived from seed {int(seed)})")
        default_obj = "maximize"
    objective = objective or default_obj
    if objective not in ("minimize", "maximize"):
        raise ConfigError(f"objective must be 'minimize' or 'maximize', got {objective!r}")

    # -- record: forward + backward under the trace ----------------------------------------
    z = z0.detach().clone().requires_grad_(True)
    z_grad = None
    loss_value = None
    raw_full = None
    with trace() as tr:
        probe(z, "z0", kind="z0")
        grad_mode = torch.is_grad_enabled()
        t0 = time.perf_counter()
        with seeded(seed, device):
            out = sample_fn(z)
        changed = torch.is_grad_enabled() != grad_mode
        torch.set_grad_enabled(grad_mode)  # a sampler that leaks no_grad is reported, not obeyed
        probe(_as_output(out), "output", kind="output")
        loss = loss_of(out)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
            raise GradcheckError(f"loss_fn must return a scalar tensor, got {loss!r:.80}")
        probe(loss, "loss", kind="loss")
        timings["forward_s"] = time.perf_counter() - t0
        out_rg, loss_rg = bool(out.requires_grad), bool(loss.requires_grad)
        t0 = time.perf_counter()
        if capture_graph:
            inputs, total, edges, regions = tr.collapse(loss if loss_rg else None)
        else:  # no walk: gradients for z0 and the step-noise leaves only
            inputs = [z, *getattr(sample_fn, "leaves", [])] if loss_rg else []
            total, edges, regions = 0, [], {}
        step_graph = StepGraph(
            nodes=sorted({i for e in edges for i in e} | set(regions)), edges=edges,
            region_ops={str(k): v for k, v in regions.items()}, total_nodes=total,
            raw_cap=raw_graph_cap,
        )
        if not capture_graph:
            step_graph.raw_skipped = "graph capture was off (capture_graph=False)"
        elif not loss_rg:
            step_graph.raw_skipped = "the loss is not in an autograd graph"
        elif total <= raw_graph_cap:
            step_graph.raw_dot = _torchviz_dot(loss)
        else:
            step_graph.raw_skipped = (f"{total} autograd nodes > cap {raw_graph_cap}: too many "
                                      f"to lay out quickly")
            if keep_raw_dot:
                raw_full = graph.raw_dot(loss)
        if loss_rg:
            # differentiate w.r.t. every leaf: what backward() would compute, .grad untouched
            inputs = [t for t in inputs if t.requires_grad]
            grads = torch.autograd.grad(loss, inputs, allow_unused=True) if inputs else []
            for t, gr in zip(inputs, grads):
                if t is z:
                    z_grad = gr
            del grads, inputs
        timings["backward_s"] = time.perf_counter() - t0
        loss_value = red(float(loss.detach()))
    hygiene = Hygiene(
        hooks_registered=tr.hooks_registered, hooks_left=tr.hooks_left or 0,
        grad_mode_before=tr.grad_mode_before, grad_mode_after=bool(tr.grad_mode_after),
        sampler_changed_grad_mode=changed,
    )
    out_stats = next((p for p in tr.stats if p.kind == "output"), None)

    # -- numeric check ---------------------------------------------------------------------
    def loss_at(zz: torch.Tensor) -> float:
        with torch.no_grad():
            return red(float(loss_of(run(zz)).detach()))

    dist_kw = {} if dctx is None else {"reduce": red, "direction_stream": dctx.rank}
    num = None
    if numeric:
        t0 = time.perf_counter()
        num = directional_check(loss_at, z, z_grad, seed=seed, **dist_kw)
        timings["numeric_s"] = time.perf_counter() - t0

    # -- optimizer: does Adam move z0, and the loss the intended way? -----------------------
    opt_res = None
    if optim_steps > 0:
        t0 = time.perf_counter()
        opt_res = _adam_probe(run, loss_of, z, z_grad, loss_value, objective, optim_steps, lr,
                              red)
        timings["optim_s"] = time.perf_counter() - t0
    report = FlowReport(
        mode=mode, objective=objective, loss_description=desc, loss=loss_value,
        output_requires_grad=out_rg, loss_requires_grad=loss_rg,
        output_grad_max_abs=out_stats.max_abs if out_stats else None,
        probes=tr.stats, numeric=num, optim=opt_res, hygiene=hygiene,
        expect={"step_noise": STEP_NOISE_EXPECTATION[mode]}, graph=step_graph, timings=timings,
        thresholds={"vanishing_rel": vanishing_rel, "exploding_ratio": exploding_ratio},
        handles={"z0": z, "z0_grad": z_grad, "output": out.detach(),
                 "leaves": list(getattr(sample_fn, "leaves", [])), "raw_dot": raw_full,
                 "loss_of": loss_of},
    )
    if out.numel() <= 65536 and out.ndim == 4 and out.shape[1] in (1, 3):
        report.samples = [[round(v, 4) for v in row] for row in
                          out.detach().double().cpu().reshape(out.shape[0], -1).tolist()]
        report.expect["sample_shape"] = list(out.shape[1:])
    report.checks = run_checks(report)

    # -- locate: only when something is wrong (or asked) -----------------------------------
    from .locate import locate as run_locator, symptoms

    if scan_randomness is None:
        scan_randomness = STEP_NOISE_EXPECTATION[mode] == "unknown"
    why = symptoms(report) if report.failed or locate != "never" else []
    if locate == "always" or (locate == "auto" and
                              (any_rank(bool(report.failed)) or scan_randomness)):
        t0 = time.perf_counter()
        reason = "; ".join(why) or ("asked (--locate always)" if locate == "always"
                                    else "a scan for fresh randomness (a custom sampler)")
        report.locator = run_locator(
            sample_fn, z0, loss_of, report, run_ctx=lambda: seeded(seed, device), reason=reason)
        timings["locate_s"] = time.perf_counter() - t0
        # a sampler that computes in lower precision inside than z0's dtype (diffusers'
        # schedulers step in float32) gets the numeric check at that precision: measured again
        # with that dtype's step sizes, never judged looser on the old measurements
        low = report.locator.lowest_dtype
        eps = torch.finfo(getattr(torch, low) if low else z.dtype).eps
        if dctx is not None:  # every rank measures again at the same precision, or none does
            eps = dctx.max(eps)
        if num is not None and not num.skipped and eps > torch.finfo(z.dtype).eps:
            t0 = time.perf_counter()
            was_failing = not report.check("numeric_directional").passed
            working = _DTYPE_OF_EPS.get(eps) or getattr(torch, low or "float32")
            report.numeric = directional_check(loss_at, z, z_grad, seed=seed, working=working,
                                               **dist_kw)
            timings["numeric_s"] = timings.get("numeric_s", 0.0) + time.perf_counter() - t0
            if was_failing and numeric_directional(report).passed and \
                    report.locator.primary is None:
                report.locator.note = None  # it explained a mismatch that was round-off
        report.checks = run_checks(report)
    timings["total_s"] = time.perf_counter() - t_start
    report.sampler = getattr(sample_fn, "description", None)
    report.notes = [str(n) for n in getattr(sample_fn, "notes", ())]
    if dctx is not None:
        report = _merge_ranks(report, dctx, sample_fn)
    observers.notify(report)
    return report


def _merge_ranks(report: FlowReport, dctx: Any, sample_fn: Any) -> FlowReport:
    """Rank 0 gets every rank's record and returns the merged report (per-rank detail in
    ``.ranks``); the other ranks return their own, marked with the world size."""
    from .distributed import merge

    t0 = time.perf_counter()
    every = dctx.gather(report.to_dict())
    report.world_size = dctx.world
    report.parallel = getattr(sample_fn, "parallel_layout", None)
    if every is None:
        return report
    merged = merge([FlowReport.from_dict(d) for d in every],
                   shard_dim=getattr(sample_fn, "shard_dim", 0), layout=report.parallel)
    merged.handles = report.handles
    merged.timings = dict(report.timings, merge_s=time.perf_counter() - t0)
    return merged


def _torchviz_dot(loss: torch.Tensor) -> str | None:
    """torchviz's op-level DOT of the backward graph (small graphs only: it recurses), with its
    id()-based node names renumbered so the same run gives the same text. Falls back to
    gradcheck's own writer where torchviz does not import (it needs distutils: Python < 3.12)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchviz's LooseVersion
        try:
            from torchviz import make_dot
        except ImportError:
            src = graph.raw_dot(loss)
        else:
            src = make_dot(loss).source
    if src is None:
        return None
    ids: dict[str, str] = {}
    return re.sub(r"(?<![\w.])\d{6,}(?![\w.])",
                  lambda m: ids.setdefault(m.group(0), str(len(ids))), src)


def _adam_probe(run, loss_of, z, z_grad, loss0, objective, steps, lr, red) -> OptimResult:
    """``steps`` Adam steps on a copy of z0, the first with the diagnosed gradient."""
    p = z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, maximize=objective == "maximize")
    losses = [loss0]
    changed, max_change = False, 0.0
    grad = z_grad
    for k in range(steps):
        p.grad = None if grad is None else grad.detach().clone()
        before = p.detach().clone()
        opt.step()
        delta = float((p.detach() - before).abs().max())
        if k == 0:
            changed, max_change = delta > 0, delta
        loss = loss_of(run(p))
        losses.append(red(float(loss.detach())))
        if k + 1 < steps:
            grad = (torch.autograd.grad(loss, [p], allow_unused=True)[0]
                    if loss.requires_grad else None)
    return OptimResult(lr=lr, steps=steps, objective=objective, z0_changed=changed,
                       max_abs_change=max_change, losses=losses)
