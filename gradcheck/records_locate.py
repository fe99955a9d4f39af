"""The locator's records: where and why the gradient breaks (:class:`BreakEvent`), what the
sampler raised, which grad-disabling sites ``allow_grad`` neutralised, and the numeric
bisection of a wrong gradient. Plain data, no torch; :mod:`gradcheck.records` re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .codec import Record
from .words import break_where, describe_break


@dataclass
class BreakEvent(Record):
    """One place where the forward (or backward) pass loses the gradient, as the locator saw it.

    ``kind``: ``hard`` (a value that depends on z0 stops carrying gradient), ``bias`` (a value is
    changed behind autograd's back: the gradient flows but is wrong), ``escape`` (a z0-dependent
    value leaves torch: .item(), .tolist(), .numpy(), int(), float()), ``randomness`` (a random
    draw not derived from z0 enters the state), ``zero`` / ``nonfinite`` (found in backward).
    """

    kind: str  # hard, bias, escape, randomness, zero or nonfinite
    cause: str  # e.g. detach, no_grad, int_cast (gradcheck.text.CAUSES says each in words)
    op: str  # the op that did it
    index: int = 0  # order among the locator's events
    step: int | None = None  # the sampler step
    before: str | None = None  # the last probe recorded before it
    before_kind: str | None = None
    after: str | None = None  # the first probe recorded after it
    after_kind: str | None = None
    location: str | None = None  # path:line of the user's code
    function: str | None = None  # the function there
    detail: str | None = None  # more on the cause
    via: str | None = None  # where the function at ``location`` was called from (a helper's caller)
    rank: int | None = None  # the process it happened in (distributed runs)
    # every grad-disabling site in effect where it happened, outermost first (decorators, with
    # blocks, a switch that stays off): all of them must change for the gradient to flow
    sites: list[str] = field(default_factory=list)
    # the user's source around ``location`` (read when the diagnosis ran, so a report re-rendered
    # elsewhere still shows it): the lines, and the number of the first
    source: list[str] = field(default_factory=list)
    source_line: int | None = None

    def where(self) -> str:
        """'step 2 (denoiser output -> state update)' (:func:`gradcheck.words.break_where`)."""
        return break_where(self)

    def describe(self) -> str:
        """One sentence: where, which op, which line, why (:func:`gradcheck.words.describe_break`)."""
        return describe_break(self)


@dataclass
class Raised(Record):
    """The sampler (or its backward) raised: where, and what torch said."""

    phase: str  # forward or backward
    type: str  # the exception's class, e.g. RuntimeError
    message: str  # its first line, as it came
    step: int | None = None  # the sampler step the forward had reached (forward only)
    location: str | None = None  # path:line of the innermost user frame in the traceback
    function: str | None = None
    hint: str | None = None  # what usually causes it
    traceback: str | None = None  # the formatted traceback (its last 4000 characters)


@dataclass
class GradSite(Record):
    """A grad-disabling site that ``allow_grad`` neutralised."""

    api: str  # "@torch.no_grad()", "with torch.no_grad():", "torch.set_grad_enabled(False)", ...
    function: str | None  # the function it wraps (a decorator) or is in
    location: str | None  # path:line (a decorator: the decorated function's first line)
    count: int = 0  # how often it was met in one run of the sampler


@dataclass
class VjpCheck(Record):
    """One probe of the numeric localisation: the gradient reaching a probed value, along a
    seeded direction, by reverse mode and by finite differences of the rest of the run."""

    probe: str  # the probe's name
    order: int  # its index in the trace (forward order)
    step: int | None
    kind: str
    reverse: float  # <v, dL/dx> by reverse mode
    fd: float | None  # by central differences (None: not measured)
    rel_error: float | None
    verdict: str  # agrees, disagrees, kink, inconclusive or flat (both ~0: tells nothing)


@dataclass
class Bisection(Record):
    """The numeric localisation of a wrong gradient (run when reverse mode disagrees with finite
    differences at z0 and the forward pass shows no cause): every probed value is perturbed by
    ``s * v`` with ``s = 0`` in one forward+backward (dL/ds = reverse mode's <v, dL/dx> at every
    probe at once), then a bisection over the probes in forward order measures finite
    differences of the rest of the run at log2(probes) of them. The gradient is right after the
    op at fault and wrong before it: the fault lies between ``wrong_at`` (the last probe whose
    gradient disagrees, z0 if none) and ``right_at`` (the next one that agrees; None: between
    ``wrong_at`` and the loss)."""

    probes: int  # probed values the perturbation reaches (the bisection's range)
    checks: list[VjpCheck] = field(default_factory=list)  # in the order they were made
    wrong_at: str | None = None  # the last probe whose gradient is wrong ("z0": none)
    right_at: str | None = None  # the first probe after it whose gradient is right
    step: int | None = None  # the sampler step the fault lies in
    rel_error: float | None = None  # the relative error measured at ``wrong_at``
    forwards: int = 0  # sampler forward passes spent (finite differences)
    backwards: int = 0  # forward+backward passes spent (reverse mode at every probe)
    seconds: float = 0.0
    note: str | None = None  # why it could not narrow further


@dataclass
class LocatorResult(Record):
    """What the break locator found. ``primary`` explains the failing checks; ``events`` are every
    relevant break; ``randomness`` every disconnected random draw that enters the state."""

    ran: bool
    reason: str  # why it ran (the symptoms, or asked)
    primary: BreakEvent | None = None  # what explains the failing checks
    events: list[BreakEvent] = field(default_factory=list)  # every relevant break (up to 50)
    randomness: list[BreakEvent] = field(default_factory=list)  # fresh draws entering the state
    note: str | None = None  # what it says when no event explains the failure
    bias: BreakEvent | None = None  # a proven bias the loss carries (its gradient is wrong)
    vjp_checks: int = 0  # custom autograd.Functions checked against finite differences
    bisection: Bisection | None = None  # the numeric localisation of a wrong gradient
    lowest_dtype: str | None = None  # the least precise float dtype of any value computed from z0
    # ops whose provenance bookkeeping raised (the locator's own failure, never the user's):
    # counted, with the first few named, so an incomplete answer says so
    internal_failures: int = 0  # ops the locator could not follow
    failed_ops: list[str] = field(default_factory=list)  # the first of them, with the error
