"""The options of a diagnosis, validated once (:class:`Options`); :func:`gradcheck.diagnose` takes
them as keywords."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from . import modes
from .errors import ConfigError
from .opdetail import POLICIES as OP_DETAIL_POLICIES
from .plan import LEVELS

_LOCATE = ("auto", "always", "never")


@dataclass
class Options:
    """How to diagnose (every field a keyword of :func:`gradcheck.diagnose`).

    Attributes:
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
    optim_steps: Adam steps on a copy of z0 for the optimizer checks (0 skips them; default
        by ``checks``: 1, the first with the recorded gradient, so one forward pass, not paid
        after a float64 verification; 3 in ``full``, 0 in ``quick``). Given explicitly,
        every step is measured.
    lr: Adam's learning rate for those steps.
    raw_graph_cap: keep the op-level autograd graph in the record only up to this many
        nodes; bigger graphs take minutes to lay out.
    keep_raw_graph: also keep the op-level graph of a run above the cap, in
        ``report.handles["raw_graph"]`` (not serialised; ``gradcheck run`` writes its DOT).
    locate: ``auto`` re-runs the forward pass under provenance tracking to name where and why
        the gradient breaks, only when a check found a problem; ``always``; ``never``.
    capture_graph: record the autograd graph collapsed onto the probes (the report's step
        graph); one Python walk of the graph, a few us per autograd node
        (``benchmarks/overhead.py`` times it). It also finds the probes just above a cut
        between the loss and z0, which the backward then differentiates too, so the probes
        above the cut report their gradient. Without it, the backward differentiates z0,
        the step-noise leaves and the probed values it captures (those of at most
        ``gradstats.DEFER_NUMEL`` elements): with such a cut, and weights that require grad
        keeping the output in the graph, larger probed values above the cut (a video
        latent's) are then reported unreached.
    vanishing_rel: a probe whose |g| is below this fraction of the output's is vanishing.
    exploding_ratio: a state whose |g| is more than this many times the next step's is
        exploding.
    scan_randomness: run the provenance pass (one more forward) to find fresh random draws
        mixed into the state even when every check passes; default: for mode ``custom``.
        ``locate="never"`` turns it off.
    policy: how the diagnosis behaves across processes (:mod:`gradcheck.policy`); default:
        that of the process group this process is in (a single process: the trivial one).
    shadow: below float64, also check the gradient of a float64 shadow run of the same
        sampler (default: where the sampler can be cast, ``sample_fn.at_dtype``, and the
        loss is a built-in one; ``False`` skips it).
    allow_grad: run the sampler with its grad-disabling sites (``@torch.no_grad()``,
        ``with torch.no_grad()``/``inference_mode``, ``set_grad_enabled(False)`` in the
        user's or a library's code) neutralised, and list them in the report as what to
        change (:mod:`gradcheck.allow`; check ``grad_allowed``). Global state is restored.
    op_detail: in the recorded pass, also note every op's source line and the gradient at
        its output, for the report's op-level view of each step (:mod:`gradcheck.opdetail`;
        no extra pass; its cost over the record phase is measured by
        ``benchmarks/overhead.py``: large on the tiny built-in model, whose ops take
        microseconds, small on big ones). ``auto`` records it while the forward pass stays
        at most 20,000 torch calls (a count: the same under any load), ``always``, ``never``.
    checks: how much evidence to buy, counted in forward+backward passes of the sampler
        (``report.cost``): ``default`` (the baseline draw, the record, a one-sided difference
        from the recorded loss, the central pair at the preferred step and then the sweep
        only on disagreement, one Adam step: its forward pass is not paid where the numeric
        check verified dL/dz0 in float64, ``loss_moves`` then reports the step's first-order
        change), ``quick`` (no baseline draw: MSE to a seeded random target unless a loss or
        target is given; one direction; no Adam step), ``full`` (central differences over
        the whole step-size sweep, three measured Adam steps).
    grad_weights: also differentiate the leaves that are not z0 or probed (a model's weights
        that require grad): what ``loss.backward()`` would compute. Off by default: they do
        not change dL/dz0 and cost about a third of the backward pass.
    """

    loss_fn: Callable[[Any], Any] | None = None
    target: Any = None
    objective: str | None = None
    mode: str | None = None
    seed: int = 0
    numeric: bool = True
    optim_steps: int | None = None
    lr: float = 1e-2
    raw_graph_cap: int = 600
    keep_raw_graph: bool = False
    locate: str = "auto"
    capture_graph: bool = True
    vanishing_rel: float = 1e-8
    exploding_ratio: float = 1e4
    scan_randomness: bool | None = None
    policy: Any = None
    shadow: bool | None = None
    allow_grad: bool = False
    op_detail: str = "auto"
    grad_weights: bool = False
    checks: str = "default"

    @classmethod
    def of(cls, options: dict[str, Any]) -> Options:
        """The options from keywords; an unknown one is a :class:`ConfigError` naming it."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            raise ConfigError(f"diagnose() got unknown option(s) {', '.join(map(repr, bad))}; "
                              f"it takes {', '.join(sorted(known))}")
        return cls(**options)

    def validate(self, sample_fn: Any) -> Options:
        """Checked once, with the mode resolved (``sample_fn.mode``, else ``custom``)."""
        self.mode = self.mode or getattr(sample_fn, "mode", None) or "custom"
        if self.locate not in _LOCATE:
            raise ConfigError(f"locate must be 'auto', 'always' or 'never', got {self.locate!r}")
        if self.op_detail not in OP_DETAIL_POLICIES:
            raise ConfigError(f"op_detail must be 'auto', 'always' or 'never', got "
                              f"{self.op_detail!r}")
        if self.checks not in LEVELS:
            raise ConfigError(f"checks must be one of {', '.join(LEVELS)}, got {self.checks!r}")
        modes.get(self.mode)
        return self

    @property
    def thresholds(self) -> dict[str, float]:
        return {"vanishing_rel": self.vanishing_rel, "exploding_ratio": self.exploding_ratio}
