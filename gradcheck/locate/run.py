"""Run the locator: the provenance pass, the backward analysis where needed, and the choice of
the primary event (see :mod:`gradcheck.locate`)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..checks_numbers import first_bad_call
from ..probes import Trace, probe, trace
from ..records import PATH_KINDS, BreakEvent, FlowReport, LocatorResult
from ..sampling.noise import path_cotangent
from .backward import backward_analysis
from .functions import FunctionCalls, wrong_backwards
from .primary import ValueFacts, choose_primary, numeric_failed, relevant_events
from .provenance import Provenance
from .switches import Collectives, GradSwitches


def locate(sample_fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor,
           loss_of: Callable[[torch.Tensor], torch.Tensor], report: FlowReport, *,
           run_ctx: Callable[[], Any], reason: str, seed: int = 0,
           rank: int = 0, policy: Any = None) -> LocatorResult:
    """Re-run ``sample_fn`` under provenance tracking and explain ``report``'s failures.

    Args:
        sample_fn: the sampler, ``z0 -> output``.
        z0: the point to re-run at (a fresh leaf copy is made).
        loss_of: ``output -> loss``, as in the diagnosis.
        report: the diagnosis to explain (its probe statuses select what to look for).
        run_ctx: a context-manager factory reproducing the diagnosis's RNG state per call.
        reason: why the locator runs (recorded).
        seed: seeds the directions of the custom-Function checks.
        rank: this process's rank (the path probe's output direction is drawn per rank).
        policy: how the processes decide together (:mod:`gradcheck.policy`; default: one).
    """
    from ..policy import Local

    policy = policy or Local()
    z = z0.detach().clone().requires_grad_(True)
    with trace() as tr:
        prov, fcalls, out, loss = _forward_pass(sample_fn, z, loss_of, run_ctx, tr)
        loss_facts = prov.get(loss) if isinstance(loss, torch.Tensor) else None
        back = _backward_pass(report, tr, prov, out, loss, z, rank)
    # a wrong gradient with the path intact: each custom autograd.Function applied to a
    # z0-dependent value, its backward against finite differences of its forward alone
    wrong, checked = wrong_backwards(fcalls.calls, seed) if numeric_failed(report) else ([], 0)
    _name_structural_zeros(back, prov.constant_zeros)
    resolve_probes(prov.events + prov.randomness, prov.probe_before, tr, prov.probe_lines)
    # float() results cannot be followed through Python arithmetic: replay with each nudged
    # (one forward pass per site; one process only, where the passes need no partner)
    if loss_facts is not None and loss_facts.bias is None and prov.float_escapes and \
            policy.world == 1:
        from .interventions import float_biases

        found, _ = float_biases(sample_fn, z0, loss_of, run_ctx=run_ctx,
                                base_loss=float(loss.detach()), escapes=prov.float_escapes)
        if found:
            loss_facts.bias = found[0]
    probe_facts: dict[int, ValueFacts] = prov.probe_meta
    primary, note = choose_primary(
        loss=loss_facts, loss_gconn=isinstance(loss, torch.Tensor) and prov.gconn(loss),
        loss_is_tensor=isinstance(loss, torch.Tensor), events=prov.events,
        probe_before=prov.probe_before, probes=probe_facts,
        probe_kinds=[e.kind for e in tr._entries], back=back, randomness=prov.randomness,
        numeric_failed=numeric_failed(report),
        expect_connected=report.expect.get("step_noise") == "connected", wrong_backward=wrong,
        mixed_cuts=prov.mixed_cuts, failing=bool(report.failed))
    low = prov.lowest_dtype
    primary, note, bisection, found = _bisect_if_needed(
        report, primary, note, low, sample_fn, z0, loss_of, run_ctx, seed, policy)
    wrong = wrong + found
    events = relevant_events(primary, prov.events, back + wrong, probe_facts)
    return LocatorResult(ran=True, reason=reason, primary=primary, events=events[:50],
                         randomness=prov.randomness[:50], note=note,
                         lowest_dtype=str(low).replace("torch.", "") if low is not None else None,
                         internal_failures=prov.failures, failed_ops=list(prov.failed_ops),
                         bias=loss_facts.bias if loss_facts is not None else None,
                         vjp_checks=checked, bisection=bisection)


def _forward_pass(sample_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                  loss_of: Callable[[torch.Tensor], torch.Tensor], run_ctx: Callable[[], Any],
                  tr: Any) -> tuple[Provenance, FunctionCalls, Any, Any]:
    """The sampler and the loss under the provenance mode and its watchers: (the provenance,
    the custom Functions called, the output, the loss; None where the run did not get there)."""
    grad_mode = torch.is_grad_enabled()
    loss = out = None
    prov = Provenance(tr, [z])
    tr.observer = prov.observe
    probe(z, "z0", kind="z0")
    try:
        with run_ctx(), prov, Collectives(prov), GradSwitches(prov), \
                FunctionCalls(prov) as fcalls:
            out = sample_fn(z)
            torch.set_grad_enabled(grad_mode)
            if isinstance(out, torch.Tensor):
                probe(out, "output", kind="output")
                loss = loss_of(out)
                probe(loss, "loss", kind="loss")
    finally:
        torch.set_grad_enabled(grad_mode)
    return prov, fcalls, out, loss


def _backward_pass(report: FlowReport, tr: Any, prov: Provenance, out: Any, loss: Any,
                   z: torch.Tensor, rank: int) -> list[BreakEvent]:
    """Where the gradient becomes exactly zero or non-finite in the backward, when the report's
    probes show it (nothing otherwise)."""
    want = set()
    statuses = {p.status for p in report.probes if p.kind in ("z0",) + PATH_KINDS}
    if "zero" in statuses:
        want.add("zero")
    if "nonfinite" in statuses or any(p.nonfinite for p in report.probes):
        want.add("nonfinite")
    pp = report.path_probe
    if want and pp is not None and pp.dead and isinstance(out, torch.Tensor) and \
            out.grad_fn is not None:
        # the loss is stationary and sends nothing back: probe the path from the output
        # along the path probe's random direction, where the gradient becomes exactly zero
        return backward_analysis(out, z, prov.grad_fn_info, want, tr,
                                 cotangent=path_cotangent(out, pp.seed, rank))
    if want and isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
        return backward_analysis(loss, z, prov.grad_fn_info, want, tr)
    return []


def _name_structural_zeros(back: list[BreakEvent], constant_zeros: list[BreakEvent]) -> None:
    """A gradient that became zero at a product with a constant 0 is by design, and a zero of
    the data (a saturated clamp) explains before such a structural one (sorted first)."""
    structural = {(e.location, e.step): e for e in constant_zeros}
    for ev in back:
        if ev.kind == "zero" and (ev.location, ev.step) in structural:
            ev.cause = "constant_zero"
            ev.detail = ("the value is multiplied by a constant that is exactly 0 (a schedule "
                         "coefficient, not the data): whatever it carries cannot influence the "
                         "output, a wasted evaluation rather than a cut")
    back.sort(key=lambda e: e.cause == "constant_zero")


def resolve_probes(events: list[BreakEvent], probe_before: dict[int, int], tr: Trace,
                   lines: dict[int, tuple] | None = None) -> None:
    """Name the probes each event happened between (``before`` / ``after``), and give an event
    made before the first stepped probe the step of the probe after it. Between one denoiser
    call and the next with no state probed in between (a plain loop), an event on a line above
    the next call's, in the same function, is at the top of the next iteration: its step."""
    entries, lines = tr._entries, lines or {}
    for ev in events:
        i = probe_before.get(id(ev))
        if i is None:
            continue
        if 0 <= i < len(entries):
            ev.before, ev.before_kind = entries[i].name, entries[i].kind
        if i + 1 < len(entries):
            ev.after, ev.after_kind = entries[i + 1].name, entries[i + 1].kind
            if ev.step is None:  # before the first stepped probe: it belongs to the next one
                ev.step = entries[i + 1].step
            elif i >= 0 and _top_of_next_iteration(ev, entries[i], entries[i + 1],
                                                   lines.get(i + 1, ())):
                ev.step = entries[i + 1].step


def _top_of_next_iteration(ev: BreakEvent, a: Any, b: Any, frames: tuple) -> bool:
    """``ev`` lies between denoiser call ``a``'s output and call ``b``'s input, on a line above
    ``b``'s call in the same function (``frames``: the user frames ``b`` was made in)."""
    at = next((loc for loc, fn in frames if fn == ev.function), None)
    if not (at and ev.location and a.kind == "denoiser_out" and b.kind == "denoiser_in"
            and b.step is not None and ev.step == a.step != b.step):
        return False
    path, _, line = at.rpartition(":")
    ev_path, _, ev_line = ev.location.rpartition(":")
    return path == ev_path and int(ev_line) < int(line)


def shadow_call_event(report: FlowReport) -> BreakEvent | None:
    """The first denoiser call whose float64 VJP disagrees with finite differences of that call
    alone (the shadow's per-call check), as a break event at its step."""
    found = first_bad_call(report)
    if found is None:
        return None
    bad, out = found
    k = bad["call"]
    ins = sorted((p for p in report.probes if p.kind == "denoiser_in"), key=lambda p: p.order)
    return BreakEvent(
        kind="bias", cause="wrong_vjp", op=f"denoiser call {k}",
        step=out.step if out is not None else None,
        before=ins[k].name if k < len(ins) else None, before_kind="denoiser_in",
        after=out.name if out is not None else None, after_kind="denoiser_out",
        detail=(f"in float64, this call's VJP is {bad['rel_error']:.2e} off finite differences "
                f"of the call alone (<w, J u> {bad['reverse']:.6e} vs {bad['fd']:.6e}; the "
                f"calls before it agree): a custom backward, a gradient hook or a wrong "
                f"derivative inside the denoiser"))


def _bisect_if_needed(report: FlowReport, primary: BreakEvent | None, note: str | None,
                      low: torch.dtype | None, sample_fn: Callable[[torch.Tensor], torch.Tensor],
                      z0: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor],
                      run_ctx: Callable[[], Any], seed: int, policy: Any
                      ) -> tuple[BreakEvent | None, str | None, Any, list[BreakEvent]]:
    """A wrong gradient that nothing in the forward pass explains: bisect over the probes for
    the first one whose gradient is right (every rank takes part, or none; a cause found on any
    rank explains it: the ranks then never bisect, so their passes and collectives stay in
    step). Returns (primary, note, the bisection, what it found)."""
    # a sampler that computes below z0's precision inside (autocast, a bf16 denoiser): the
    # numeric check's failure was judged at z0's precision, which is not evidence there; it is
    # measured again at the working precision (diagnosis.remeasure_at_working_precision), and
    # nothing is bisected on the round-off of the lower precision
    lower = low is not None and torch.finfo(low).eps > torch.finfo(z0.dtype).eps
    # the float64 shadow's per-call check named the denoiser call (gradcheck.callcheck): that
    # is the place; and a failure the shadow alone saw (the working precision's difference is
    # below its round-off) is not bisected at the working precision either
    call = shadow_call_event(report)
    if primary is None and call is not None:
        primary, note = call, None
    only_shadow = report.numeric is not None and report.numeric.verdict == "inconclusive"
    if not numeric_failed(report) or policy.any(primary is not None or lower or only_shadow):
        return primary, note, None, []
    from .bisect import bisect

    bisection, found = bisect(sample_fn, z0, loss_of, run_ctx=run_ctx, seed=seed,
                              working=z0.dtype, reduce=policy.sum)
    if found is not None and primary is None:
        return found, None, bisection, [found]
    return primary, note, bisection, []
