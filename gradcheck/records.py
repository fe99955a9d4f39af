"""Plain-data records: what a diagnosis observed, and what the checks concluded.

Nothing here imports torch. A ``report.json`` written by ``gradcheck run`` is made of these
dataclasses (``to_dict``) and can be loaded back (``from_dict``), re-checked and re-rendered on a
machine without torch.

Non-finite floats are stored in JSON as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
so that the file stays strict JSON (browsers' ``JSON.parse`` rejects bare ``NaN``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1

#: Kinds that make up the sampler's gradient path (the "every step" check looks at these).
PATH_KINDS = ("x_T", "state", "denoiser_in", "denoiser_out")


def _enc(x: Any) -> Any:
    """Make a value strict-JSON safe (non-finite floats become strings), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _enc(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_enc(v) for v in x]
    return x


_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _dec(x: Any) -> Any:
    """Inverse of :func:`_enc`."""
    if isinstance(x, str) and x in _SPECIAL:
        return _SPECIAL[x]
    if isinstance(x, dict):
        return {k: _dec(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_dec(v) for v in x]
    return x


def _plain(obj: Any) -> dict[str, Any]:
    """asdict() minus fields marked ``metadata={"transient": True}``."""
    out = {}
    for f in fields(obj):
        if f.metadata.get("transient"):
            continue
        v = getattr(obj, f.name)
        if hasattr(v, "to_dict"):
            v = v.to_dict()
        elif isinstance(v, list):
            v = [e.to_dict() if hasattr(e, "to_dict") else e for e in v]
        elif hasattr(v, "__dataclass_fields__"):
            v = asdict(v)
        out[f.name] = v
    return out


def _take(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``d`` that are fields of ``cls`` (forward compatible with newer schemas)."""
    names = {f.name for f in fields(cls) if not f.metadata.get("transient")}
    return {k: v for k, v in _dec(d).items() if k in names}


@dataclass
class ProbeStats:
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

    def to_dict(self) -> dict[str, Any]:
        return _enc(_plain(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeStats:
        return cls(**_take(cls, d))


@dataclass
class Finding:
    """The verdict of one check. ``level`` is ``error`` (counts towards pass/fail), ``warning``
    (a problem that does not block the gradient: reported, not failed) or ``info``."""

    name: str
    passed: bool
    message: str
    value: Any = None
    threshold: Any = None
    step: int | None = None
    level: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return _enc(_plain(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(**_take(cls, d))


@dataclass
class NumericResult:
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

    def to_dict(self) -> dict[str, Any]:
        return _enc(_plain(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NumericResult:
        return cls(**_take(cls, d))


@dataclass
class OptimResult:
    """A few Adam steps on a copy of z0: did z0 change, did the loss move the intended way?"""

    lr: float
    steps: int
    objective: str
    z0_changed: bool
    max_abs_change: float
    losses: list[float] = field(default_factory=list)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _enc(_plain(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimResult:
        return cls(**_take(cls, d))


@dataclass
class Hygiene:
    """What the trace left behind: hooks still registered, the grad mode before and after, and
    whether the user's sampler itself changed the global grad mode and left it changed."""

    hooks_registered: int
    hooks_left: int
    grad_mode_before: bool
    grad_mode_after: bool
    sampler_changed_grad_mode: bool

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hygiene:
        return cls(**_take(cls, d))


#: Break causes the locator names, and how they read.
CAUSES = {
    "non_autograd_collective": "a torch.distributed collective, which autograd does not see "
                               "(the autograd-aware ones are in torch.distributed.nn.functional)",
    "no_grad": "no_grad region",
    "inference_mode": "inference_mode region",
    "detach": ".detach()",
    "data_read": ".data read",
    "data_write": ".data write",
    "requires_grad_false": "requires_grad_(False)",
    "non_differentiable": "non-differentiable op",
    "int_cast": "integer/bool cast",
    "python_roundtrip": "round trip through Python",
    "numpy_roundtrip": "round trip through NumPy",
    "decorated_no_grad": "entry point decorated with @torch.no_grad()",
    "reentrant_checkpoint": "reentrant checkpoint with no input requiring grad",
    "inplace_no_grad": "in-place write under no_grad",
    "disconnected_randomness": "disconnected randomness",
    "zero_grad_op": "op passes exactly zero gradient",
    "nonfinite_backward": "op produces NaN/Inf in backward",
    "unknown": "unclassified op",
}

_KIND_WORDS = {"z0": "z0", "x_T": "x_T", "state": "state update", "step_noise": "step noise",
               "denoiser_in": "denoiser input", "denoiser_out": "denoiser output",
               "output": "output", "loss": "loss", "custom": "custom probe"}


@dataclass
class BreakEvent:
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
        """'step 2 (denoiser output -> state update)'."""
        head = f"step {self.step}" if self.step is not None else "before the first step"
        if self.before_kind or self.after_kind:
            a = _KIND_WORDS.get(self.before_kind or "", self.before or "start")
            b = _KIND_WORDS.get(self.after_kind or "", self.after or "end")
            head += f" ({a} -> {b})"
        return head

    def describe(self) -> str:
        """'breaks at step 2 (denoiser output -> state update), op detach at my_sampler.py:41
        (cause: .detach())'."""
        verb = {"bias": "is bypassed", "escape": "escapes", "randomness": "takes in fresh noise",
                "zero": "becomes exactly zero", "nonfinite": "becomes non-finite"}.get(self.kind,
                                                                                   "breaks")
        at = (f" at {self.location}" if self.location else "") + \
            (f" on rank {self.rank}" if self.rank is not None else "")
        cause = CAUSES.get(self.cause, self.cause)
        detail = f"; {self.detail}" if self.detail else ""
        return f"{verb} at {self.where()}, op {self.op}{at} (cause: {cause}{detail})"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BreakEvent:
        return cls(**_take(cls, d))


@dataclass
class LocatorResult:
    """What the break locator found. ``primary`` explains the failing checks; ``events`` are every
    relevant break; ``randomness`` every disconnected random draw that enters the state."""

    ran: bool
    reason: str
    primary: BreakEvent | None = None
    events: list[BreakEvent] = field(default_factory=list)
    randomness: list[BreakEvent] = field(default_factory=list)
    note: str | None = None
    lowest_dtype: str | None = None  # the least precise float dtype of any value computed from z0

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        d["primary"] = self.primary.to_dict() if self.primary else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocatorResult:
        kw = _take(cls, d)
        kw["primary"] = BreakEvent.from_dict(kw["primary"]) if kw.get("primary") else None
        kw["events"] = [BreakEvent.from_dict(e) for e in kw.get("events", [])]
        kw["randomness"] = [BreakEvent.from_dict(e) for e in kw.get("randomness", [])]
        return cls(**kw)


@dataclass
class StepGraph:
    """The autograd graph collapsed onto the probes: a node per probed tensor that was in the graph
    (by probe ``order``), an edge ``[src, dst]`` when dst was computed from src through unprobed
    ops only (forward direction; the gradient flows dst -> src). ``region_ops[k]`` counts the
    unprobed autograd ops between probe k and the probes it was computed from, by op type.

    ``raw_dot`` is the op-level graph (torchviz) when it has at most ``raw_cap`` nodes, otherwise
    None and ``raw_skipped`` says why.
    """

    nodes: list[int] = field(default_factory=list)
    edges: list[list[int]] = field(default_factory=list)
    region_ops: dict[str, dict[str, int]] = field(default_factory=dict)
    total_nodes: int = 0
    raw_cap: int = 0
    raw_dot: str | None = None
    raw_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepGraph:
        return cls(**_take(cls, d))


@dataclass
class FlowReport:
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
    samples: list | None = None  # the sampler outputs (small images only), for the report's grid
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

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        d["passed"] = self.passed
        return _enc(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowReport:
        kw = _take(cls, d)
        kw["probes"] = [ProbeStats.from_dict(p) for p in kw.get("probes", [])]
        kw["checks"] = [Finding.from_dict(c) for c in kw.get("checks", [])]
        kw["numeric"] = NumericResult.from_dict(kw["numeric"]) if kw.get("numeric") else None
        kw["optim"] = OptimResult.from_dict(kw["optim"]) if kw.get("optim") else None
        kw["hygiene"] = Hygiene.from_dict(kw["hygiene"])
        kw["graph"] = StepGraph.from_dict(kw["graph"]) if kw.get("graph") else None
        kw["locator"] = LocatorResult.from_dict(kw["locator"]) if kw.get("locator") else None
        return cls(**kw)


@dataclass
class RunRecord:
    """The whole of ``report.json``: one FlowReport per mode plus config and environment."""

    config: dict[str, Any]
    environment: dict[str, Any]
    modes: dict[str, FlowReport]
    schema_version: int = SCHEMA_VERSION
    tool: str = "gradcheck"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.modes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool": self.tool,
            "passed": self.passed,
            "config": _enc(self.config),
            "environment": _enc(self.environment),
            "modes": {m: r.to_dict() for m, r in self.modes.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            from .errors import GradcheckError

            raise GradcheckError(
                f"report schema_version {version!r} is not supported (this gradcheck reads "
                f"version {SCHEMA_VERSION})"
            )
        return cls(
            config=_dec(d["config"]),
            environment=_dec(d["environment"]),
            modes={m: FlowReport.from_dict(r) for m, r in d["modes"].items()},
            schema_version=version,
            tool=d.get("tool", "gradcheck"),
        )
