"""Plain-data records: what a diagnosis observed, and what the checks concluded.

Nothing here imports torch. A ``report.json`` written by ``gradcheck run`` is made of these
dataclasses and can be loaded back, re-checked and re-rendered on a machine without torch. One
codec (:mod:`gradcheck.codec`) turns every record into JSON and back, driven by the type hints
below; the JSON Schema in ``docs/`` is generated from the same hints, so neither can drift from
the records.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codec import SCHEMA_VERSION, Record
from .records_locate import (Bisection, BreakEvent, GradSite, LocatorResult, Raised,
                             VjpCheck)


#: Kinds that make up the sampler's gradient path (the "every step" check looks at these).
PATH_KINDS = ("x_T", "state", "denoiser_in", "denoiser_out")


@dataclass
class ProbeStats(Record):
    """Statistics of the gradient that reached one probed tensor. Never the gradient itself.

    ``reached`` is False when no gradient arrived at all (the tensor was not on any backward path);
    ``requires_grad`` tells whether it was in an autograd graph at all when it was probed.
    """

    name: str  # e.g. x[3], D_out[2], eps[1]
    kind: str  # z0, x_T, state, step_noise, denoiser_in, denoiser_out, output, loss, or custom
    order: int  # position in forward (recording) order
    step: int | None = None  # the sampler step it belongs to
    call: int | None = None  # the denoiser call index (denoiser probes)
    sigma: float | None = None  # the noise level there
    dtype: str = ""
    shape: list[int] = field(default_factory=list)
    requires_grad: bool = False  # in an autograd graph when probed
    grad_fn: str | None = None  # its autograd node's type
    connected_to_z0: bool | None = None  # its graph reaches z0 (z0, x_T and step noise only)
    reached: bool = False  # any gradient arrived
    norm: float | None = None  # L2 norm of the gradient that arrived
    mean_abs: float | None = None  # mean |g|
    max_abs: float | None = None  # max |g|
    nonfinite: int | None = None  # how many elements of the gradient are NaN/Inf

    @property
    def status(self) -> str:
        """One word: ``ok``, ``zero`` (arrived, exactly zero), ``nonfinite``, ``unreached``
        (in a graph, but no gradient arrived) or ``not_in_graph`` (did not require grad)."""
        if not self.reached:
            return "unreached" if self.requires_grad else "not_in_graph"
        if self.nonfinite:
            return "nonfinite"
        if self.max_abs == 0.0:
            return "zero"
        return "ok"

    @property
    def carries(self) -> bool:
        """A gradient arrived and is not exactly zero (it may be non-finite)."""
        return self.reached and (self.max_abs or 0.0) > 0.0


@dataclass
class Finding(Record):
    """The verdict of one check. ``level`` is ``error`` (counts towards pass/fail), ``warning``
    (a problem that does not block the gradient: reported, not failed) or ``info``."""

    name: str  # the check, e.g. grad_reaches_z0
    passed: bool
    message: str  # what was found, where, and a hint
    value: Any = None  # the measured value
    threshold: Any = None  # what it was judged against
    step: int | None = None  # the sampler step concerned, if one
    level: str = "error"  # error, warning or info


@dataclass
class NumericResult(Record):
    """Central finite differences of the loss along a unit direction v against <v, dL/dz0>."""

    dtype: str  # z0's dtype
    direction_seed: int  # seeds the unit direction v
    eps: float | None  # the step size judged (the best of the sweep)
    fd: float | None  # (L(z0 + eps v) - L(z0 - eps v)) / 2 eps
    reverse: float | None  # <v, dL/dz0> from reverse mode
    abs_error: float | None
    rel_error: float | None
    rtol: float  # the relative tolerance for the dtype
    atol: float  # the round-off floor of the finite difference
    # every step size tried (eps, fd, abs_error, roundoff_floor; forward/backward/curvature
    # where the kink was judged; straddles: 1 when the two ends took other branches of a
    # piecewise op, 0 when the same, where that was asked)
    sweep: list[dict[str, float]] = field(default_factory=list)
    skipped: str | None = None  # why the check did not run
    working_dtype: str | None = None  # lower than dtype: the sampler casts down inside
    # agrees | disagrees (smooth evidence against reverse mode) | kink (the difference straddles
    # a kink; reverse mode matches a one-sided derivative) | inconclusive (straddled, no smooth
    # evidence either way)
    verdict: str | None = None  # see above
    note: str | None = None  # what the kink test saw
    # why fewer directions were taken than the precision's default (the check level's budget)
    limited: str | None = None
    directions: int = 1  # random directions checked
    # the smallest relative gradient error |e|/|g| caught with >= 99% probability
    detectable: float | None = None  # see above
    others: list[dict[str, Any]] = field(default_factory=list)  # the other directions
    # the loss at z0 once more (one forward pass, bought only where reverse mode disagrees):
    # not the recorded loss when the sampler is not the same function of z0 at every call
    replayed: float | None = None
    # all directions together (4 or more on smooth evidence): the same relative offset of
    # reverse mode along each (offset, std_error, lower_bound, threshold, directions, fails)
    consistent: dict[str, Any] | None = None
    # a float64 shadow's per-denoiser-call check (gradcheck.callcheck): each call's VJP against
    # finite differences of that call alone, in order up to the first that disagrees
    calls: list[dict[str, Any]] = field(default_factory=list)
    # a shadow's float64 copy of the denoiser: the memory of its cast parameters and buffers
    copy_bytes: int | None = None


@dataclass
class OptimResult(Record):
    """A few Adam steps on a copy of z0: did z0 change, did the loss move the intended way?"""

    lr: float
    steps: int  # Adam steps taken
    objective: str  # minimize or maximize
    z0_changed: bool  # the first step changed z0
    max_abs_change: float  # max |dz0| of the first step
    losses: list[float] = field(default_factory=list)  # the loss before and after each step
    skipped: str | None = None
    # when the loss moved the wrong way: [lr, loss after one step] for halved learning rates
    backtrack: list[list[float]] = field(default_factory=list)  # see above
    # the step's forward pass not paid (why; the default level after a float64-verified
    # gradient): its first-order change of the loss, <dL/dz0, dz0>, instead of a measured one
    unmeasured: str | None = None
    predicted: float | None = None


@dataclass
class PathProbe(Record):
    """Run when dL/d(output) is exactly zero (a stationary loss sends no gradient back, so the
    probes cannot tell a healthy path from a dead one): one more forward and a backward from the
    output along a seeded random direction. ``dead``: even then z0 gets an exactly zero gradient,
    so the output does not depend on z0."""

    seed: int  # seeds the output direction
    z0_norm: float  # |dz0| along it
    dead: bool  # z0's gradient is exactly zero along it: the output does not depend on z0


@dataclass
class CompiledCheck(Record):
    """The sampler as the user runs it, torch.compile'd (one forward+backward, no gradcheck mode
    active), against the diagnosed pass, in which compiled code ran as its eager original."""

    regions: int  # calls into compiled code during gradcheck's passes
    loss: float | None = None  # the compiled run's loss at z0
    loss_eager: float | None = None  # the diagnosed (eager) pass's
    rel_error: float | None = None  # |dL/dz0 compiled - eager| / |eager|
    rtol: float | None = None  # the dtype's tolerance (the numeric check's)
    skipped: str | None = None  # why it was not compared


@dataclass
class Hygiene(Record):
    """What the trace left behind: hooks still registered, the grad mode before and after, and
    whether the user's sampler itself changed the global grad mode and left it changed."""

    hooks_registered: int  # gradient hooks the trace registered
    hooks_left: int  # of them still registered after it closed (0 is clean)
    grad_mode_before: bool
    grad_mode_after: bool
    sampler_changed_grad_mode: bool  # the sampler left the global grad mode changed


@dataclass
class OpGraph(Record):
    """The op-level autograd graph: node ``i`` is ``labels[i]`` (a backward op such as
    ``MulBackward0``, or ``leaf (2, 1, 8, 8)``); an edge ``[a, b]`` means b was computed from a."""

    labels: list[str] = field(default_factory=list)  # node i's op (or leaf and shape)
    edges: list[list[int]] = field(default_factory=list)  # [a, b]: b computed from a


@dataclass
class OpRegion(Record):
    """The ops between one probe and the probes it was computed from: the op-level view of one
    region of the step graph (the report draws a sampler step's regions together).

    Node ``i`` is ``ops[i]``, a backward op such as ``ConvolutionBackward0``; node 0 is the op
    that produced the probed value itself. ``edges`` ``[a, b]``: node b was computed from node a;
    ``sources`` ``[k, i]``: node i was computed from the value of probe ``k``. ``grads[i]`` is
    |dL/d(output of node i)| (None: no gradient arrived there) and ``where[i]`` the ``path:line``
    of the call that made it, when the op detail was recorded (see ``StepGraph.detail``).
    """

    probe: int  # the probe (order) whose value these ops compute
    ops: list[str] = field(default_factory=list)  # node i's backward op
    edges: list[list[int]] = field(default_factory=list)  # [a, b]: b computed from a
    sources: list[list[int]] = field(default_factory=list)  # [probe order, node]
    grads: list[float | None] | None = None  # |g| at each node's output (op detail)
    where: list[str | None] | None = None  # path:line that made each node (op detail)
    weights: int = 0  # unprobed leaf tensors (weights) the ops read, not drawn
    dropped: int = 0  # ops beyond the per-region cap, counted in region_ops but not kept
    # nodes the backward did not differentiate (op detail): no path from them to z0 or another
    # differentiated input, they read weights whose gradient was not asked for (grad_weights)
    not_asked: list[int] = field(default_factory=list)


@dataclass
class StepGraph(Record):
    """The autograd graph collapsed onto the probes: a node per probed tensor that was in the graph
    (by probe ``order``), an edge ``[src, dst]`` when dst was computed from src through unprobed
    ops only (forward direction; the gradient flows dst -> src). ``region_ops[k]`` counts the
    unprobed autograd ops between probe k and the probes it was computed from, by op type.

    ``raw`` is the op-level graph when it has at most ``raw_cap`` nodes, otherwise None and
    ``raw_skipped`` says why.
    """

    nodes: list[int] = field(default_factory=list)  # probe orders in the graph
    edges: list[list[int]] = field(default_factory=list)  # [src, dst] probe orders
    region_ops: dict[str, dict[str, int]] = field(default_factory=dict)  # unprobed ops by type
    total_nodes: int = 0  # autograd nodes walked
    raw_cap: int = 0  # the op-level graph is kept up to this many nodes
    raw: OpGraph | None = None  # the op-level graph (small runs)
    raw_skipped: str | None = None  # why it was not kept
    regions: list[OpRegion] = field(default_factory=list)  # the op-level view, region by region
    # whether each op's |g| and source line were recorded, and if not, why not
    detail: bool = False
    detail_skipped: str | None = None


@dataclass
class StageCost(Record):
    """What one stage of a diagnosis cost: sampler forward passes, backward passes, seconds, and
    seconds in units of one forward+backward of the sampler (:class:`Cost`)."""

    stage: str  # baseline, record, shadow, numeric, optim, path_probe, locate
    forwards: int = 0  # calls of the sampler
    backwards: int = 0  # backward passes through it
    seconds: float = 0.0
    units: float = 0.0


@dataclass
class Cost(Record):
    """A diagnosis's cost per stage in units of one forward+backward of the same sampler: the
    recorded pass's own forward and backward seconds (measured in this run, no extra pass; the
    record phase costs about 1.0-1.1x a plain one, benchmarks/overhead.py)."""

    unit_s: float  # one forward+backward, seconds
    stages: list[StageCost] = field(default_factory=list)
    total_units: float = 0.0
    forwards: int = 0
    backwards: int = 0
    checks: str = "default"  # the --checks level that was run
    # the unit's pass also recorded the op detail (a Python call per op: on a tiny model it
    # takes about twice a plain pass, so the stages' units read low there; overhead.py)
    unit_op_detail: bool = False
    # the float64 shadow's copy of the denoiser (its parameters and buffers), bytes
    shadow_copy_bytes: int | None = None


@dataclass
class FlowReport(Record):
    """Everything one diagnosis observed for one noise mode, and the checks' findings.

    ``handles`` holds live objects for the Python caller (the z0 leaf that was differentiated, step
    noise leaves, the output); it is never serialised.
    """

    mode: str  # the noise mode (gradcheck.modes)
    objective: str  # minimize or maximize
    loss_description: str
    loss: float | None
    output_requires_grad: bool
    loss_requires_grad: bool
    output_grad_max_abs: float | None  # max |dL/d(output)|: 0 means a stationary loss
    probes: list[ProbeStats]  # in forward (recording) order
    numeric: NumericResult | None  # the finite-difference check (None: not run)
    optim: OptimResult | None  # the optimizer probe (None: not run)
    hygiene: Hygiene
    expect: dict[str, Any] = field(default_factory=dict)  # step_noise, sample_shape
    graph: StepGraph | None = None  # the step graph (None: not captured)
    locator: LocatorResult | None = None  # None: the locator did not run
    thresholds: dict[str, float] = field(default_factory=dict)  # vanishing_rel, exploding_ratio
    samples: list[list[float]] | None = None  # the outputs, flattened (small images only)
    truncation: dict[str, Any] | None = None  # truncated backprop against full: what z0 gets
    sampler: str | None = None  # what was diagnosed, e.g. "k-diffusion sample_euler (unwrapped)"
    notes: list[str] = field(default_factory=list)  # advice from the sampler's adapter
    world_size: int = 1  # processes that diagnosed one shard of z0 each (torch.distributed)
    parallel: str | None = None  # the layout: ddp, fsdp, cp (or None: the user's own)
    ranks: list[dict[str, Any]] | None = None  # per-rank detail (distributed runs)
    path_probe: PathProbe | None = None  # the path itself, probed when the loss is stationary
    # the numeric check of a float64 shadow run of the same sampler (below float64, where the
    # denoiser can be cast): the power the check at the working precision lacks
    numeric_shadow: NumericResult | None = None  # see above
    # diagnose(allow_grad=True): the grad-disabling sites neutralised in the record pass (what
    # must change for the gradient to flow); None when not asked
    allowed_grad: list[GradSite] | None = None
    raised: Raised | None = None  # the sampler or its backward raised: nothing else was run
    # the sampler raised in a pass gradcheck added (under no_grad, at a perturbed z0, in the
    # locator's replay): that pass's evidence is missing, the rest of the diagnosis stands
    pass_errors: list[Raised] = field(default_factory=list)
    # torch.compile'd code: the compiled run against the diagnosed (eager) one; None where none ran
    compiled: CompiledCheck | None = None
    checks: list[Finding] = field(default_factory=list)  # every check, in a fixed order
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    cost: Cost | None = None  # the same in forward+backward units, with the passes counted
    handles: dict[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                    metadata={"transient": True})

    COMPUTED = ("passed",)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.checks if f.level == "error")

    def __repr__(self) -> str:
        """One line: the mode, the verdict, what failed, the loss (``summary()`` says more)."""
        errors = [f for f in self.checks if f.level == "error"]
        bad = [f.name for f in errors if not f.passed]
        loss = f"{self.loss:.4g}" if isinstance(self.loss, float) else "-"
        return (f"<FlowReport mode={self.mode} {'PASS' if self.passed else 'FAIL'} "
                f"({len(errors) - len(bad)}/{len(errors)} checks"
                + (f"; failed: {', '.join(bad)}" if bad else "") + f"), loss {loss}>")

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.checks if f.level == "error" and not f.passed]

    def probe(self, name: str) -> ProbeStats:
        for p in self.probes:
            if p.name == name:
                return p
        raise KeyError(f"no probe named {name!r}; probes: {', '.join(p.name for p in self.probes)}")

    def of_kind(self, *kinds: str) -> list[ProbeStats]:
        return [p for p in self.probes if p.kind in kinds]

    def check(self, name: str) -> Finding:
        for f in self.checks:
            if f.name == name:
                return f
        raise KeyError(f"no check named {name!r}")


@dataclass
class RunRecord(Record):
    """The whole of ``report.json``: one FlowReport per mode plus config and environment."""

    config: dict[str, Any]  # what was run (see the list above)
    environment: dict[str, Any]  # versions, platform, device, threads
    modes: dict[str, FlowReport]  # mode name -> its diagnosis
    schema_version: int = SCHEMA_VERSION  # of this file format
    tool: str = "gradcheck"  # which command wrote it
    #: read from a file: mode -> the checks whose stored verdict the evidence contradicts
    rejudged: dict[str, list[str]] = field(default_factory=dict, metadata={"transient": True})

    COMPUTED = ("passed",)
    TOOL = "gradcheck"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.modes.values())


@dataclass
class OptimizeResult(Record):
    """What ``gradcheck optimize`` did: the objective's value, loss, gradient norm and mean
    per-sample norm of z0 at every iteration, and its checks."""

    objective: str  # diverge, class:K or target
    description: str  # the objective in words
    direction: str  # up or down: which way the value should move
    iters: int
    lr: float
    clip: float | None  # gradient-norm clipping
    norm_reg: str  # none, chi or renorm
    mode: str  # the noise mode
    values: list[float]  # the objective's value, per iteration
    losses: list[float]  # the minimised loss (with the regulariser), per iteration
    grad_norms: list[float]  # |dloss/dz0|, per iteration
    z_norms: list[float]  # mean per-sample ||z0||, per iteration
    sqrt_d: float  # where a Gaussian z0's norm concentrates
    z_finite: bool  # z0 stayed finite
    seconds: float
    checks: list[Finding] = field(default_factory=list)  # the optimisation's checks
    extra: dict[str, Any] = field(default_factory=dict)  # the objective's parameters
    batch: int = 0  # samples in z0 (the whole batch across processes; 0: not recorded)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.level == "error")


@dataclass
class OptimizeRecord(Record):
    """The whole of ``optimize.json``: configuration, environment, the result, and the samples
    (flattened per sample) before and after, with the classifier's labels where there is one."""

    config: dict[str, Any]  # the command's options
    environment: dict[str, Any]  # versions, platform, device, threads
    result: OptimizeResult
    sample_shape: list[int]  # one sample's shape
    samples_before: list[list[float]]  # the outputs before, flattened per sample
    samples_after: list[list[float]]  # and after
    labels_before: list[list[float]] | None = None  # [class, confidence] per sample
    labels_after: list[list[float]] | None = None  # [class, confidence] per sample, after
    class_hits: int | None = None  # samples classified as the objective's class, after
    class_hits_before: int | None = None  # the same, before
    schema_version: int = SCHEMA_VERSION  # of this file format
    tool: str = "gradcheck optimize"  # which command wrote it
    #: read from a file: mode -> the checks whose stored verdict the evidence contradicts
    rejudged: dict[str, list[str]] = field(default_factory=dict, metadata={"transient": True})

    TOOL = "gradcheck optimize"

    @property
    def passed(self) -> bool:
        return self.result.passed


#: the records, with the locator's (records_locate) re-exported here
__all__ = [
    "Bisection", "BreakEvent", "Cost", "Finding", "FlowReport", "GradSite", "Hygiene",
    "LocatorResult", "NumericResult", "OpGraph", "OpRegion", "OptimResult", "OptimizeRecord",
    "OptimizeResult", "PATH_KINDS", "PathProbe", "ProbeStats", "Raised", "RunRecord",
    "SCHEMA_VERSION", "StageCost", "StepGraph", "VjpCheck",
]
