"""The checks on measured numbers (pure, like :mod:`gradcheck.checks`): reverse mode against finite
differences (with the power each verdict has), the gradient's scale through the steps, and what
one or more Adam steps did."""
from __future__ import annotations

import math

from .records import Finding, FlowReport, NumericResult, ProbeStats
from .text import fmt, located


def power(n) -> str:
    """'; 7 directions: a gradient 1.9% off is caught with 99% probability'."""
    if n.detectable is None:
        return ""
    many = f"{n.directions} directions" if n.directions > 1 else "1 direction"
    c = n.consistent
    along = (f" (an error along the gradient itself, as a scaled path gives, from "
             f"{c['detectable']:.2%}: all directions together)"
             if c and c.get("detectable") is not None and not c.get("fails") else "")
    return (f"; {many}: a gradient {n.detectable:.2%} off is caught with 99% probability"
            + along + limits(n))


def limits(n) -> str:
    """' (why the check bought less than it could)', or ''."""
    return f" ({n.limited})" if getattr(n, "limited", None) else ""


def numeric_directional(r: FlowReport) -> Finding:
    f = _numeric_directional(r)
    sh = r.numeric_shadow
    if sh is None:
        return f
    if sh.skipped:
        return Finding(f.name, f.passed, value=f.value, threshold=f.threshold, level=f.level,
                       message=f"{f.message}; no float64 shadow check: {sh.skipped}")
    ok = within_tolerance(sh) or sh.verdict in ("kink", "inconclusive")  # as the main check
    said = (f"; a float64 shadow run of the same sampler: <v, dL/dz0> = {sh.reverse:.6e} vs "
            f"finite differences {sh.fd:.6e}, relative error {fmt(sh.rel_error)}{power(sh)}")
    if ok:
        return Finding(f.name, f.passed, value=f.value, threshold=f.threshold, level=f.level,
                       message=f.message + said)
    return Finding(f.name, False, value=sh.rel_error, threshold=sh.rtol,
                   message=f.message + said + ". reverse mode disagrees with the loss in float64: "
                   "a wrong custom backward or a biased shortcut" + per_call(r)
                   + (f"; located: {located(r)}" if located(r) else ""))


def first_bad_call(r: FlowReport) -> tuple[dict, ProbeStats | None] | None:
    """The shadow's per-call check: the first denoiser call whose VJP disagrees with finite
    differences of that call alone, and its output probe (None if all agree or none ran)."""
    calls = r.numeric_shadow.calls if r.numeric_shadow is not None else []
    bad = next((c for c in calls if not c["agrees"]), None)
    if bad is None:
        return None
    outs = sorted((p for p in r.probes if p.kind == "denoiser_out"), key=lambda p: p.order)
    return bad, (outs[bad["call"]] if bad["call"] < len(outs) else None)


def per_call(r: FlowReport) -> str:
    """'; each denoiser call alone, in float64: ...' (the shadow's per-call check), or ''."""
    calls = r.numeric_shadow.calls if r.numeric_shadow is not None else []
    if not calls:
        return ""
    found = first_bad_call(r)
    if found is None:
        return (f"; each of the {len(calls)} denoiser calls alone, in float64, has the right "
                f"VJP: the wrong gradient is outside the denoiser")
    bad, out = found
    step = out.step if out is not None else None
    return (f"; each denoiser call alone, in float64: calls 0..{bad['call'] - 1} agree, call "
            f"{bad['call']}" + (f" (step {step})" if step is not None else "")
            + f" has a VJP {bad['rel_error']:.2e} off finite differences of that call alone "
            f"(<w, J u> {bad['reverse']:.6e} vs {bad['fd']:.6e}): the wrong gradient is inside "
            f"the denoiser, from that call on").replace("calls 0..-1 agree, ", "")


def within_tolerance(n: NumericResult) -> bool:
    """Reverse mode and the finite difference judged agree within the dtype's tolerance and
    the difference's round-off floor."""
    return n.abs_error <= n.rtol * max(abs(n.fd), abs(n.reverse)) + n.atol


def replay_differs(r: FlowReport) -> float | None:
    """The relative difference between the recorded loss at z0 and its replay, where it is more
    than round-off (None: not replayed, or the same)."""
    n = r.numeric
    if n is None or n.replayed is None or r.loss is None:
        return None
    diff = abs(n.replayed - r.loss)
    eps = _EPS.get(n.working_dtype or n.dtype, _EPS["float32"])
    scale = max(abs(r.loss), abs(n.replayed), 1e-300)
    return diff / scale if diff > 1e3 * eps * scale else None


_EPS = {"float64": 2.2e-16, "float32": 1.2e-7, "float16": 9.8e-4, "bfloat16": 7.8e-3}


def sampler_deterministic(r: FlowReport) -> Finding:
    """The sampler is the same function of z0 at every call: a replay at z0 (bought only where
    reverse mode disagrees with finite differences) gives the recorded loss."""
    n = r.numeric
    if n is None or n.replayed is None:
        return Finding("sampler_deterministic", True, level="info", value=None, threshold=None,
                       message="not replayed (no disagreement to explain)")
    rel = replay_differs(r)
    if rel is None:
        return Finding("sampler_deterministic", True, value=n.replayed, threshold=r.loss,
                       message=f"replayed at z0: the recorded loss again ({n.replayed:.6e}), so "
                       f"the disagreement is the gradient's, not a sampler that changes")
    return Finding(
        "sampler_deterministic", False, value=n.replayed, threshold=r.loss,
        message=f"the sampler is not the same function of z0 at every call: the loss at z0 "
        f"was {r.loss:.6e} when recorded and {n.replayed:.6e} replayed (relative difference "
        f"{rel:.2e}). Likely: a stateful denoiser or cache, a scheduler reused without resetting "
        f"its state, a call counter, or a generator object drawn from without a seed. Finite "
        f"differences cannot judge its gradient: make every call start from the same state")


def _numeric_directional(r: FlowReport) -> Finding:
    n = r.numeric
    if n is None or n.skipped:
        return Finding("numeric_directional", True, level="info", value=None, threshold=None,
                       message=f"numeric check skipped{': ' + n.skipped if n and n.skipped else ''}")
    if replay_differs(r) is not None:
        return Finding("numeric_directional", True, value=n.rel_error, threshold=n.rtol,
                       level="warning",
                       message=f"inconclusive: <v, dL/dz0> = {n.reverse:.6e}, finite "
                       f"differences {n.fd:.6e}, but the sampler changed between calls "
                       f"(sampler_deterministic): no finite difference can judge it")
    biased = bool(n.consistent and n.consistent.get("fails"))
    ok = within_tolerance(n) and not biased
    if ok and n.verdict == "inconclusive":  # both sides under the round-off: no evidence
        return Finding("numeric_directional", True, value=n.rel_error, threshold=n.rtol,
                       level="warning",
                       message=f"inconclusive: <v, dL/dz0> = {n.reverse:.6e}, finite "
                       f"differences {n.fd:.6e}: {n.note}"
                       + limits(n))
    if not ok and n.verdict in ("kink", "inconclusive"):
        # a piecewise-smooth sampler (clamp, clip_sample, relu): the central difference crosses
        # a kink; judged on one-sided evidence, or said to be inconclusive, never failed
        head = (f"<v, dL/dz0> = {n.reverse:.6e}; central finite differences {n.fd:.6e} "
                f"(eps {n.eps:.1e}, {n.dtype}) disagree, but {n.note}")
        return Finding("numeric_directional", True, value=n.rel_error, threshold=n.rtol,
                       level="error" if n.verdict == "kink" else "warning",
                       message=("" if n.verdict == "kink" else "inconclusive: ") + head
                       + power(n))
    head = (f"<v, dL/dz0> = {n.reverse:.6e} vs finite differences {n.fd:.6e} "
            f"(eps {n.eps:.1e}, {n.dtype}): relative error {fmt(n.rel_error)}, "
            f"tolerance rtol {n.rtol:.0e} + round-off {fmt(n.atol)}")
    if n.working_dtype:
        head += (f" (judged at {n.working_dtype}: the sampler computes in {n.working_dtype} "
                 f"inside)")
    head += power(n)
    if biased:
        head += f". {n.note}"
    elif not ok and n.reverse == 0.0:
        head += ". The loss changes along v but reverse mode says it does not: the gradient path " \
                "is cut (detach / no_grad / a non-differentiable round trip)"
    elif not ok:
        head += ". reverse mode disagrees with the loss it differentiates: a wrong custom " \
                "backward, a stochastic sampler (unseeded noise), or a biased shortcut"
    if not ok and located(r):
        head += f"; located: {located(r)}"
    return Finding("numeric_directional", ok, value=n.rel_error, threshold=n.rtol, message=head)


def grad_scale(r: FlowReport) -> Finding:
    """Vanishing (a state's or z0's |g| below ``vanishing_rel`` of the output's) and exploding (a state's |g| more
    than ``exploding_ratio`` times the next step's) gradients."""
    vr = r.thresholds.get("vanishing_rel", 1e-8)
    er = r.thresholds.get("exploding_ratio", 1e4)
    out = next((p for p in r.probes if p.kind == "output"), None)
    if out is None or out.status != "ok":
        return Finding("grad_scale", True, level="info", value=None, threshold=None,
                       message="no gradient at the output to compare against")
    # states and z0 only: a denoiser input's gradient is legitimately tiny where the denoiser
    # all but ignores its input (high sigma)
    vanishing = [p for p in r.probes if p.kind in ("z0", "x_T", "state") and p.status == "ok"
                 and p.norm < vr * out.norm]
    states = sorted((p for p in r.probes if p.kind in ("x_T", "state") and p.status == "ok"),
                    key=lambda p: p.order)
    exploding = [(a, b, a.norm / b.norm) for a, b in zip(states, states[1:])
                 if b.norm > 0 and a.norm / b.norm > er]
    problems, at = [], None
    if vanishing:
        worst = min(vanishing, key=lambda p: p.norm)
        op = _op_that_scales(r, worst.order, out.order, shrink=True)
        problems.append(f"vanishing at {len(vanishing)} probe(s), worst {worst.name} "
                        f"|g| {fmt(worst.norm)} = {fmt(worst.norm / out.norm)} x the output's "
                        f"(threshold {vr:g})" + (op[0] if op else ""))
        at = op[1] if op else worst.step
    if exploding:
        a, b, ratio = max(exploding, key=lambda t: t[2])
        op = _op_that_scales(r, a.order, b.order, shrink=False)
        problems.append(f"exploding between {a.name} and {b.name}: |g| grows {ratio:.3g}x in one "
                        f"step (threshold {er:g})" + (op[0] if op else ""))
        at = at if at is not None else (op[1] if op else a.step)
    ok = not problems
    return Finding("grad_scale", ok, value=(min(p.norm / out.norm for p in vanishing)
                                           if vanishing else None),
                   threshold={"vanishing_rel": vr, "exploding_ratio": er},
                   message="no vanishing or exploding gradient" if ok else "; ".join(problems),
                   step=at if not ok else None)


def _op_that_scales(r: FlowReport, after: int, upto: int,
                    shrink: bool) -> tuple[str, int | None] | None:
    """Located like a break: among the ops recorded between probes ``after`` and ``upto`` (op
    detail), the one across which |g| grows the most (``shrink``: falls the most), as a phrase
    naming the op, its factor and its line, and its step. None without op detail."""
    steps = {p.order: p.step for p in r.probes}
    norms = {p.order: p.norm for p in r.probes if p.status == "ok"}
    best = None
    for reg in (r.graph.regions if r.graph else []):
        if not (after < reg.probe <= upto) or not reg.grads or not reg.where:
            continue
        # across op b (made from a, or from probe k): |g| at b's input over |g| at its output
        pairs = [(reg.grads[a], b) for a, b in reg.edges] + [
            (norms.get(k), b) for k, b in reg.sources]
        for g_in, b in pairs:
            g_out = reg.grads[b]
            if not (g_in and g_out and math.isfinite(g_in) and math.isfinite(g_out)) or \
                    reg.where[b] is None:
                continue
            f = g_in / g_out
            if best is None or (f < best[0] if shrink else f > best[0]):
                best = (f, reg.ops[b], reg.where[b], steps.get(reg.probe))
    if best is None or (best[0] >= 1 if shrink else best[0] <= 1):
        return None
    f, op, where, step = best
    name = op[:-len("Backward0")] if op.endswith("Backward0") else op
    return (f"; the op that {'shrinks' if shrink else 'grows'} it most: {name} (x{f:.3g}) at "
            f"{where}" + (f", step {step}" if step is not None else ""), step)


def optimizer_changes_z0(r: FlowReport) -> Finding:
    o = r.optim
    if o is None or o.skipped:
        return Finding("optimizer_changes_z0", True, level="info", value=None, threshold=None,
                       message="optimizer check skipped")
    msg = (f"one Adam step (lr {o.lr:g}) changes z0 (max |dz0| {fmt(o.max_abs_change)})"
           if o.z0_changed else
           f"one Adam step (lr {o.lr:g}) leaves z0 unchanged: its gradient is None or zero")
    return Finding("optimizer_changes_z0", o.z0_changed, value=o.max_abs_change, threshold="> 0",
                   message=msg)


def loss_moves(r: FlowReport) -> Finding:
    o = r.optim
    if o is None or o.skipped or (len(o.losses) < 2 and not o.unmeasured):
        return Finding("loss_moves", True, level="info", value=None, threshold=None,
                       message="optimizer check skipped")
    sign = 1.0 if o.objective == "maximize" else -1.0
    way = "up" if o.objective == "maximize" else "down"
    if o.unmeasured:
        pred = o.predicted if o.predicted is not None else math.nan
        return Finding("loss_moves", sign * pred > 0, level="info", value=pred,
                       threshold=way,
                       message=f"one Adam step (lr {o.lr:g}) moves the loss {way} by "
                       f"{abs(pred):.3g} to first order (<dL/dz0, dz0> = {pred:+.3g}); its "
                       f"forward pass was not paid: {o.unmeasured}")
    first, last = o.losses[0], o.losses[-1]
    ok = math.isfinite(last) and sign * (last - first) > 0
    way = "up" if o.objective == "maximize" else "down"
    moved = [(lr, v) for lr, v in o.backtrack if math.isfinite(v) and sign * (v - first) > 0]
    if not ok and moved:  # the given step overshoots a curved or kinked loss; a smaller one
        lr, v = moved[0]  # taken along the same gradient moves it as intended
        return Finding("loss_moves", True, value=v - first, threshold=f"{way}",
                       message=f"{o.steps} Adam steps at lr {o.lr:g} went {first:.6g} -> "
                       f"{last:.6g} (the step overshoots), but one step at lr {lr:g} along the "
                       f"same gradient moves the loss {way} as intended: {first:.6g} -> {v:.6g}")
    msg = (f"{o.steps} Adam steps move the loss {way} as intended: {first:.6g} -> {last:.6g}"
           if ok else
           f"{o.steps} Adam steps should move the loss {way} ({o.objective}) but it went "
           f"{first:.6g} -> {last:.6g}. hint: the gradient is missing, zero or has the wrong sign")
    return Finding("loss_moves", ok, value=last - first, threshold=f"{way}", message=msg)


def compiled_matches_eager(r: FlowReport) -> Finding:
    """torch.compile'd code ran as its eager original in the diagnosed passes: the sampler run
    compiled, as the user runs it, must give the same dL/dz0."""
    c = r.compiled
    if c is None or c.skipped or c.rel_error is None:
        why = c.skipped if c is not None and c.skipped else "no compiled code ran"
        return Finding("compiled_matches_eager", True, level="info", value=None,
                       threshold=None, message=f"not compared: {why}")
    ok = c.rel_error <= c.rtol
    head = (f"{c.regions} call(s) into torch.compile'd code ran as their eager original in the "
            f"diagnosed passes; the sampler run compiled gives dL/dz0 within "
            f"{fmt(c.rel_error)} of the diagnosed one (tolerance {c.rtol:.0e}; loss "
            f"{c.loss:.6e} compiled, {c.loss_eager:.6e} eager)")
    if ok:
        return Finding("compiled_matches_eager", True, value=c.rel_error, threshold=c.rtol,
                       message=head)
    return Finding("compiled_matches_eager", False, value=c.rel_error, threshold=c.rtol,
                   message=head.replace("within", "off by") + ". The verdict above is the eager "
                   "code's; compiled, the sampler computes another gradient: a compiler problem, "
                   "or code that behaves differently compiled (a graph break that drops a side "
                   "effect, a guard on mutable state). hint: torch.compile(backend='eager'), "
                   "then 'aot_eager', shows which stage changes it")
