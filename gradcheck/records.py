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

from .codec import Record

SCHEMA_VERSION = 2

#: Kinds that make up the sampler's gradient path (the "every step" check looks at these).
PATH_KINDS = ("x_T", "state", "denoiser_in", "denoiser_out")


@dataclass
class ProbeStats(Record):
    """Statistics of the gradient that reached one probed tensor. Never the gradient itself.

    ``reached`` is False when no gradient arrived at all (the tensor was not on any backward path);
    ``requires_grad`` tells whether it was in an autograd graph at all when it was probed.
    """

    name: str
    kind: str
    order: int
    step: int | None = None
    call: int | None = None
    sigma: float | None = None
    dtype: str = ""
    shape: list[int] = field(default_factory=list)
    requires_grad: bool = False
    grad_fn: str | None = None
    connected_to_z0: bool | None = None
    reached: bool = False
    norm: float | None = None
    mean_abs: float | None = None
    max_abs: float | None = None
    nonfinite: int | None = None

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

    name: str
    passed: bool
    message: str
    value: Any = None
    threshold: Any = None
    step: int | None = None
    level: str = "error"


@dataclass
class NumericResult(Record):
    """Central finite differences of the loss along a unit direction v against <v, dL/dz0>."""

    dtype: str
    direction_seed: int
    eps: float | None
    fd: float | None
    reverse: float | None
    abs_error: float | None
    rel_error: float | None
    rtol: float
    atol: float
    sweep: list[dict[str, float]] = field(default_factory=list)
    skipped: str | None = None
    working_dtype: str | None = None  # lower than dtype: the sampler casts down inside


@dataclass
class OptimResult(Record):
    """A few Adam steps on a copy of z0: did z0 change, did the loss move the intended way?"""

    lr: float
    steps: int
    objective: str
    z0_changed: bool
    max_abs_change: float
    losses: list[float] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class Hygiene(Record):
    """What the trace left behind: hooks still registered, the grad mode before and after, and
    whether the user's sampler itself changed the global grad mode and left it changed."""

    hooks_registered: int
    hooks_left: int
    grad_mode_before: bool
    grad_mode_after: bool
    sampler_changed_grad_mode: bool


@dataclass
class BreakEvent(Record):
    """One place where the forward (or backward) pass loses the gradient, as the locator saw it.

    ``kind``: ``hard`` (a value that depends on z0 stops carrying gradient), ``bias`` (a value is
    changed behind autograd's back: the gradient flows but is wrong), ``escape`` (a z0-dependent
    value leaves torch: .item(), .tolist(), .numpy(), int(), float()), ``randomness`` (a random
    draw not derived from z0 enters the state), ``zero`` / ``nonfinite`` (found in backward).
    """

    kind: str
    cause: str
    op: str
    index: int = 0
    step: int | None = None
    before: str | None = None
    before_kind: str | None = None
    after: str | None = None
    after_kind: str | None = None
    location: str | None = None
    function: str | None = None
    detail: str | None = None
    via: str | None = None  # where the function at ``location`` was called from (a helper's caller)
    rank: int | None = None  # the process it happened in (distributed runs)

    def where(self) -> str:
        """'step 2 (denoiser output -> state update)' (:func:`gradcheck.text.break_where`)."""
        from .text import break_where

        return break_where(self)

    def describe(self) -> str:
        """One sentence: where, which op, which line, why (:func:`gradcheck.text.describe_break`)."""
        from .text import describe_break

        return describe_break(self)


@dataclass
class LocatorResult(Record):
    """What the break locator found. ``primary`` explains the failing checks; ``events`` are every
    relevant break; ``randomness`` every disconnected random draw that enters the state."""

    ran: bool
    reason: str
    primary: BreakEvent | None = None
    events: list[BreakEvent] = field(default_factory=list)
    randomness: list[BreakEvent] = field(default_factory=list)
    note: str | None = None
    lowest_dtype: str | None = None  # the least precise float dtype of any value computed from z0
    #: ops whose provenance bookkeeping raised (the locator's own failure, never the user's):
    #: counted, with the first few op names, so an incomplete answer says so
    internal_failures: int = 0
    failed_ops: list[str] = field(default_factory=list)


@dataclass
class OpGraph(Record):
    """The op-level autograd graph: node ``i`` is ``labels[i]`` (a backward op such as
    ``MulBackward0``, or ``leaf (2, 1, 8, 8)``); an edge ``[a, b]`` means b was computed from a."""

    labels: list[str] = field(default_factory=list)
    edges: list[list[int]] = field(default_factory=list)


@dataclass
class StepGraph(Record):
    """The autograd graph collapsed onto the probes: a node per probed tensor that was in the graph
    (by probe ``order``), an edge ``[src, dst]`` when dst was computed from src through unprobed
    ops only (forward direction; the gradient flows dst -> src). ``region_ops[k]`` counts the
    unprobed autograd ops between probe k and the probes it was computed from, by op type.

    ``raw`` is the op-level graph when it has at most ``raw_cap`` nodes, otherwise None and
    ``raw_skipped`` says why.
    """

    nodes: list[int] = field(default_factory=list)
    edges: list[list[int]] = field(default_factory=list)
    region_ops: dict[str, dict[str, int]] = field(default_factory=dict)
    total_nodes: int = 0
    raw_cap: int = 0
    raw: OpGraph | None = None
    raw_skipped: str | None = None


@dataclass
class FlowReport(Record):
    """Everything one diagnosis observed for one noise mode, and the checks' findings.

    ``handles`` holds live objects for the Python caller (the z0 leaf that was differentiated, step
    noise leaves, the output); it is never serialised.
    """

    mode: str
    objective: str
    loss_description: str
    loss: float | None
    output_requires_grad: bool
    loss_requires_grad: bool
    output_grad_max_abs: float | None
    probes: list[ProbeStats]
    numeric: NumericResult | None
    optim: OptimResult | None
    hygiene: Hygiene
    expect: dict[str, Any] = field(default_factory=dict)
    graph: StepGraph | None = None
    locator: LocatorResult | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    samples: list[list[float]] | None = None  # the sampler outputs (small images only), for the report's grid
    truncation: dict[str, Any] | None = None  # truncated backprop against full: what z0 gets
    sampler: str | None = None  # what was diagnosed, e.g. "k-diffusion sample_euler (unwrapped)"
    notes: list[str] = field(default_factory=list)  # advice from the sampler's adapter
    world_size: int = 1  # processes that diagnosed one shard of z0 each (torch.distributed)
    parallel: str | None = None  # the layout: ddp, fsdp, cp (or None: the user's own)
    ranks: list[dict[str, Any]] | None = None  # per-rank detail (distributed runs)
    checks: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                    metadata={"transient": True})

    COMPUTED = ("passed",)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.checks if f.level == "error")

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

    config: dict[str, Any]
    environment: dict[str, Any]
    modes: dict[str, FlowReport]
    schema_version: int = SCHEMA_VERSION
    tool: str = "gradcheck"

    COMPUTED = ("passed",)
    TOOL = "gradcheck"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.modes.values())


@dataclass
class OptimizeResult(Record):
    """What ``gradcheck optimize`` did: the objective's value, loss, gradient norm and mean
    per-sample norm of z0 at every iteration, and its checks."""

    objective: str
    description: str
    direction: str
    iters: int
    lr: float
    clip: float | None
    norm_reg: str
    mode: str
    values: list[float]
    losses: list[float]
    grad_norms: list[float]
    z_norms: list[float]  # mean per-sample ||z0||
    sqrt_d: float
    z_finite: bool
    seconds: float
    checks: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)


@dataclass
class OptimizeRecord(Record):
    """The whole of ``optimize.json``: configuration, environment, the result, and the samples
    (flattened per sample) before and after, with the classifier's labels where there is one."""

    config: dict[str, Any]
    environment: dict[str, Any]
    result: OptimizeResult
    sample_shape: list[int]
    samples_before: list[list[float]]
    samples_after: list[list[float]]
    labels_before: list[list[float]] | None = None  # [class, confidence] per sample
    labels_after: list[list[float]] | None = None
    class_hits: int | None = None  # samples classified as the objective's class, after
    class_hits_before: int | None = None
    schema_version: int = SCHEMA_VERSION
    tool: str = "gradcheck optimize"

    TOOL = "gradcheck optimize"

    @property
    def passed(self) -> bool:
        return self.result.passed
