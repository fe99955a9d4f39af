"""Which of the locator's findings explains a diagnosis: a pure policy over plain facts, no
torch (unit-tested on hand-made facts).

The provenance pass (:mod:`.provenance`) leaves, for the loss and for every probe, the facts of
its value (:class:`ValueFacts`: does it depend on z0, does it still carry gradient to z0, which
cut it carries); the backward analysis (:mod:`.backward`) adds where a gradient became exactly
zero or non-finite. :func:`choose_primary` picks the one event that explains the failing checks.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..records import PATH_KINDS, BreakEvent, FlowReport


@dataclass
class ValueFacts:
    """What the provenance pass knows of one value."""

    dep: bool  # its value depends on z0
    gconn: bool  # it still carries gradient back to z0
    rg: bool  # requires_grad when last seen
    ev: BreakEvent | None = None  # the first op that cut it from z0's gradient
    bias: BreakEvent | None = None  # the first op that changed it behind autograd's back
    rand: dict | None = None  # the fresh random draw it came from
    direct: bool = False  # the output of the op that recorded ``ev`` (or a plain copy of it)
    made_at: tuple | None = None  # (op, path:line, step, probe index) where the value was made
    data_of: object = None  # x.data of which tensor (a weak reference): writes to it bypass x


def choose_primary(*, loss: ValueFacts | None, loss_gconn: bool, loss_is_tensor: bool,
                   events: list[BreakEvent], probe_before: dict[int, int],
                   probes: dict[int, ValueFacts], probe_kinds: list[str],
                   back: list[BreakEvent], randomness: list[BreakEvent],
                   numeric_failed: bool, expect_connected: bool,
                   wrong_backward: list[BreakEvent] = (),
                   mixed_cuts: list[BreakEvent] = (), failing: bool | None = None
                   ) -> tuple[BreakEvent | None, str | None]:
    """The event that explains the failing checks, and a note when there is none.

    Args:
        loss: the loss value's facts (None: the loss was never made, or is not a tensor).
        loss_gconn: the loss still carries gradient to z0.
        loss_is_tensor: the sampler returned a tensor and the loss was computed.
        events: the forward pass's cuts, escapes and bypasses, in the order they happened.
        probe_before: ``id(event)`` -> index of the last probe recorded before it.
        probes: probe index -> the facts of the probed value when it was probed.
        probe_kinds: probe index -> its kind.
        back: the backward analysis's events (exactly zero, non-finite), first first.
        randomness: fresh random draws that entered z0-dependent values.
        numeric_failed: the numeric check failed (a wrong gradient, not a missing one).
        expect_connected: the mode promises step noise derived from z0.
        wrong_backward: custom autograd.Functions whose backward disagrees with finite
            differences of their forward (found when the numeric check failed), first first.
        mixed_cuts: cuts whose value was mixed back into a value that carries gradient.
        failing: some check failed (default: the numeric one did).
    """
    failing = numeric_failed if failing is None else failing
    # an ordered list of rules (numbered below), the first that applies wins
    # 1. the loss itself does not carry gradient to z0: its own cut
    primary, note = _the_loss_cut(loss, loss_gconn, loss_is_tensor, events)
    # 2. the first probe (forward order) that depends on z0 but lost its gradient; 2b. a path
    #    value that no longer depends on z0 at all
    if primary is None:
        primary = _first_cut_probe(probes) or _dependence_lost(probes, probe_kinds, events,
                                                               probe_before)
    bias = loss.bias if loss is not None else None
    if primary is None:
        data_zeros = [e for e in back if e.cause != "constant_zero"]
        primary = next((e for e in (
            # 2c. a proven bias the loss carries: a value that left autograd and came back, a
            #     write behind autograd's back (whatever the numeric check says)
            bias,
            # 2d. a custom autograd.Function whose backward disagrees with its own forward
            #     (checked numerically, only when the numeric check failed)
            wrong_backward[0] if numeric_failed and wrong_backward else None,
            # 3. a cut whose value was mixed back into the gradient path (a detached or no_grad
            #    term, a probed value replaced by a cut one), when a check failed for it
            mixed_cuts[0] if failing and mixed_cuts else None,
            # 4. exactly zero, non-finite (backward); a structural zero only after the rest
            data_zeros[0] if data_zeros else None,
            back[0] if back else None,
        ) if e is not None), None)
    # 5. values that escaped through Python or NumPy, when a check failed
    if primary is None and (numeric_failed or failing):
        escapes = [e for e in events if e.kind == "escape" or (
            e.kind == "hard" and e.cause in ("python_roundtrip", "numpy_roundtrip"))]
        primary = bias or (escapes[0] if escapes else None)
        if primary is None and numeric_failed:
            note = ("no forward-side cause found: the forward pass keeps the gradient path, so a "
                    "custom autograd.Function backward (or a non-deterministic forward) is the "
                    "likely cause")
    # 6. learnable step noise that is not derived from z0
    if primary is None and randomness and expect_connected:
        primary = randomness[0]
    return primary, note


def _the_loss_cut(loss: ValueFacts | None, loss_gconn: bool, loss_is_tensor: bool,
                  events: list[BreakEvent]) -> tuple[BreakEvent | None, str | None]:
    """Rule 1: the loss itself does not carry gradient to z0: its own cut (the first occurrence
    of a cut repeated in every step, a detach or collective in each denoiser call, where the
    gradient first stops), else the first escape or cut."""
    if loss is not None and loss.dep and not loss_gconn and loss.ev is not None:
        key = (loss.ev.kind, loss.ev.cause, loss.ev.op, loss.ev.location)
        return next((e for e in events if (e.kind, e.cause, e.op, e.location) == key),
                    loss.ev), None
    if loss_is_tensor and not loss_gconn:
        escapes = [e for e in events if e.kind == "escape"]
        hard = [e for e in events if e.kind == "hard"]
        primary = (escapes or hard or [None])[0]
        return primary, None if primary is not None else \
            "the loss does not depend on z0 as far as torch can see"
    return None, None


def _first_cut_probe(probes: dict[int, ValueFacts]) -> BreakEvent | None:
    """Rule 2: the cut of the first probe (forward order) that depends on z0 but lost its
    gradient."""
    for i in sorted(probes):
        m = probes[i]
        if m.dep and not m.gconn and m.ev is not None:
            return m.ev
    return None


def _dependence_lost(probes: dict[int, ValueFacts], probe_kinds: list[str],
                     events: list[BreakEvent], probe_before: dict[int, int]) -> BreakEvent | None:
    """Rule 2b: a path value that no longer depends on z0 at all as far as torch can see (it
    went through NumPy or Python and came back as a fresh tensor): the last cut before it."""
    seen_dep = False
    for i in sorted(probes):
        m = probes[i]
        if probe_kinds[i] not in PATH_KINDS + ("z0", "step_noise"):
            continue
        if m.dep:
            seen_dep = True
        elif seen_dep and not m.gconn:
            before = [ev for ev in events if ev.kind in ("hard", "escape")
                      and probe_before.get(id(ev), -1) < i]
            return before[-1] if before else None
    return None


def relevant_events(primary: BreakEvent | None, events: list[BreakEvent],
                    back: list[BreakEvent], probes: dict[int, ValueFacts]) -> list[BreakEvent]:
    """The events worth listing: the primary, every cut or bypass a probed value carries, and
    every escape."""
    relevant = {id(e) for e in [primary] if e is not None}
    relevant |= {id(m.ev) for m in probes.values() if m.ev is not None}
    relevant |= {id(m.bias) for m in probes.values() if m.bias is not None}
    return [e for e in events + back if id(e) in relevant or e.kind in ("escape",)]


def symptoms(report: FlowReport) -> list[str]:
    """Why a report calls for the locator (empty: it does not)."""
    out = []
    z = next((p for p in report.probes if p.kind == "z0"), None)
    if not report.output_requires_grad or not report.loss_requires_grad:
        out.append("the output/loss is not in the autograd graph")
    if z is not None and z.status != "ok":
        out.append(f"z0 gradient is {z.status}")
    bad = [p for p in report.probes if p.kind in PATH_KINDS + ("step_noise",)
           and p.status != "ok" and not (p.kind == "step_noise" and not p.requires_grad
                                         and report.expect.get("step_noise") != "connected")]
    if bad:
        out.append(f"{len(bad)} probe(s) without a usable gradient")
    if numeric_failed(report):
        out.append("reverse mode disagrees with finite differences")
    return out


def numeric_failed(report: FlowReport) -> bool:
    """The numeric check's own verdict (its tolerance lives in checks.numeric_directional)."""
    return any(f.name == "numeric_directional" and f.level == "error" and not f.passed
               for f in report.checks)
