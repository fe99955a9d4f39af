"""Stages 1 and 2 of a diagnosis: the loss (a baseline drawn, a target, or the user's), and the
recorded pass (forward and backward under the trace, the autograd graph collapsed onto the probes,
the op detail), each returning what it found. :mod:`gradcheck.diagnosis` runs them."""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import graph
from .errors import ConfigError, GradcheckError
from .opdetail import AUTO_BUDGET_OPS, OpGrads, OpSources
from .policy import Local
from .probes import probe, trace
from .rng import seeded
from .records import Hygiene, ProbeStats, Raised, StepGraph


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
    record stage's hygiene) must not change the passes after it. A sampler that raises without
    grad (a hook registered unconditionally needs a tensor that requires grad) is run with grad
    on in gradcheck's no-grad passes, from its first such failure on: the same values, and the
    evidence of those passes is not lost."""
    needs_grad = [False]

    def run(z: torch.Tensor) -> torch.Tensor:
        grad_mode = torch.is_grad_enabled()
        try:
            if not grad_mode and not needs_grad[0]:
                try:
                    with seeded(seed, device):
                        return _as_output(sample_fn(z))
                except GradcheckError:
                    raise
                except Exception:  # noqa: BLE001 - run again with grad on; an error there raises
                    needs_grad[0] = True
            if needs_grad[0] and not grad_mode:  # as in the recorded pass: z requires grad
                with seeded(seed, device), torch.enable_grad():
                    z = z.detach().requires_grad_(z.is_floating_point())
                    return _as_output(sample_fn(z)).detach()
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
            @functools.wraps(value)  # its signature too: an adapter's takes wrap=
            def at_dtype(dtype: torch.dtype, **kw: Any) -> Any:
                shadow = value(dtype, **kw)
                return None if shadow is None else Counted(shadow, self.tally)
            return at_dtype
        return value


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
    from .torch_internals import is_user_file, rel_path

    loc = fn = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if is_user_file(code.co_filename):
            loc, fn = f"{rel_path(code.co_filename)}:{tb.tb_lineno}", code.co_name
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
    z_grad, raw_full, grad_s = None, None, 0.0
    timings: dict[str, float] = {}
    phase = ["forward"]
    grad_mode = torch.is_grad_enabled()
    try:
        with trace(capture=True) as tr:
            probe(z, "z0", kind="z0")
            t0 = time.perf_counter()
            sources = None
            if capture_graph and op_detail != "never":
                sources = OpSources(AUTO_BUDGET_OPS if op_detail == "auto" else None,
                                    capture=True)
            out, value, changed = _forward(sample_fn, z, loss, tr, seed, sources, grad_mode)
            timings["forward_s"] = time.perf_counter() - t0
            out_rg, loss_rg = bool(out.requires_grad), bool(value.requires_grad)
            t0 = time.perf_counter()
            inputs, edges, step_graph, op_grads = _collapse(
                tr, value, loss_rg, capture_graph, raw_graph_cap, sources,
                [z, *getattr(sample_fn, "leaves", [])])
            del sources
            raw_full = _raw_graph(step_graph, value, capture_graph, loss_rg, keep_raw_graph)
            if loss_rg:
                keep = tr.probed_leaves() | {id(z)} | {
                    id(t) for t in getattr(sample_fn, "leaves", [])}
                z_grad, grad_s = _backward(tr, value, z, inputs, keep, edges, step_graph,
                                           op_grads, capture_graph, grad_weights, phase)
            del inputs
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
                         hygiene=_hygiene(tr, False),
                         graph=StepGraph(raw_skipped="the sampler raised"), timings=timings,
                         raised=raised_record(exc, phase[0], tr))
    return Recording(z=z, z_grad=z_grad, out=out.detach(), loss_value=loss_value,
                     out_requires_grad=out_rg, loss_requires_grad=loss_rg, probes=tr.stats,
                     hygiene=_hygiene(tr, changed), graph=step_graph, raw_graph=raw_full,
                     timings=timings, unit_s=timings["forward_s"] + (grad_s if loss_rg else 0.0))


def _hygiene(tr: Any, changed: bool) -> Hygiene:
    return Hygiene(hooks_registered=tr.hooks_registered, hooks_left=tr.hooks_left or 0,
                   grad_mode_before=tr.grad_mode_before, grad_mode_after=bool(tr.grad_mode_after),
                   sampler_changed_grad_mode=changed)


def _forward(sample_fn: Callable[[torch.Tensor], Any], z: torch.Tensor, loss: Loss, tr: Any,
             seed: int, sources: OpSources | None,
             grad_mode: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The sampler and the loss under the trace: (output, loss value, whether the sampler left
    the grad mode changed)."""
    try:
        with seeded(seed, z.device), (sources or contextlib.nullcontext()):
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
    return out, value, changed


def _collapse(tr: Any, value: torch.Tensor, loss_rg: bool, capture_graph: bool,
              raw_graph_cap: int, sources: OpSources | None, leaves: list[torch.Tensor]
              ) -> tuple[list[torch.Tensor], list, StepGraph, OpGrads | None]:
    """The autograd graph walked from the loss and collapsed onto the probes: (the backward's
    inputs, the probe edges, the step graph, the ops' gradients to capture). The walk and what
    is built from its nodes run with the collector paused (see graph.collector_paused): the node
    wrappers are gone before it runs again."""
    with graph.collector_paused():
        if capture_graph:
            inputs, total, edges, regions, op_regions = tr.collapse(value if loss_rg else None)
        else:  # no walk: gradients for z0 and the step-noise leaves only
            inputs = leaves if loss_rg else []
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
        del op_regions
    return inputs, edges, step_graph, op_grads


def _raw_graph(step_graph: StepGraph, value: torch.Tensor, capture_graph: bool, loss_rg: bool,
               keep_raw_graph: bool) -> Any:
    """The op-level graph kept in the step graph (small runs), or why not; returns the full one
    when it is over the cap and ``keep_raw_graph`` asks for it."""
    if not capture_graph:
        step_graph.raw_skipped = "graph capture was off (capture_graph=False)"
    elif not loss_rg:
        step_graph.raw_skipped = "the loss is not in an autograd graph"
    elif step_graph.total_nodes <= step_graph.raw_cap:
        step_graph.raw = graph.op_graph(value)
    else:
        step_graph.raw_skipped = (f"{step_graph.total_nodes} autograd nodes > cap "
                                  f"{step_graph.raw_cap}: too many to lay out quickly")
        if keep_raw_graph:
            return graph.op_graph(value)
    return None


def _backward(tr: Any, value: torch.Tensor, z: torch.Tensor, inputs: list[torch.Tensor],
              keep: set[int], edges: list, step_graph: StepGraph, op_grads: OpGrads | None,
              capture_graph: bool, grad_weights: bool,
              phase: list[str]) -> tuple[torch.Tensor | None, float]:
    """One backward pass: (dL/dz0, its seconds). Differentiates w.r.t. z0 and the probed leaves
    (step-noise leaves): a model's weights that require grad (a diffusers UNet's do) cost a third
    of the backward and tell nothing about z0, so they are left out unless asked; .grad is left
    untouched. The probes above a cut between the loss and z0 are differentiated too (autograd
    would prune them: see Trace.backward_plan)."""
    inputs = [t for t in inputs if t.requires_grad and (grad_weights or id(t) in keep)]
    plan = tr.backward_plan(edges, inputs) if capture_graph else None
    if op_grads is not None and plan is not None and not grad_weights:
        # ops that read weights only: their gradient is not asked for (worked out before the
        # backward: their outputs are not captured, which would make the backward compute them)
        for reg in step_graph.regions:
            if reg.weights and reg.probe in plan.reached and not reg.dropped:
                reg.not_asked = graph.not_asked(len(reg.ops), reg.edges, reg.sources,
                                                plan.needed)
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
    z_grad = next((gr for t, gr in zip(inputs, grads) if t is z), None)
    return z_grad, grad_s


