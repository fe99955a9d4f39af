"""Pure checks: ``FlowReport -> Finding``. No torch here, so a saved report.json can be re-judged
anywhere. Messages follow pytest's ``approx`` style: what failed, how many of how many, the worst
value against the threshold, where, and one hint."""
from __future__ import annotations

from collections.abc import Callable

from .checks_optimize import (  # noqa: F401 - re-exported: gradcheck optimize's checks
    DRIFT_SIGMAS, PLAUSIBLE_SIGMAS, chi_band, optimize_checks,
)
from .checks_numbers import (  # noqa: F401 - power, limits: re-exported
    compiled_matches_eager, grad_scale, limits, loss_moves, numeric_directional,
    optimizer_changes_z0, power, sampler_deterministic,
)
from .records import PATH_KINDS, Finding, FlowReport, ProbeStats
from .text import BREAK_POINT_WORDS, describe_break, fmt, located, probe_where, ranges, step_picture, steps_phrase


def break_point(report: FlowReport) -> tuple[ProbeStats, ProbeStats, str] | None:
    """Where, between two probes in forward order, the gradient path breaks (None if it does
    not): first where the autograd graph ends (an in-graph probe followed by one that does not
    require grad: kind ``graph_ends``), else where the gradient stops (the last probe without
    gradient that is followed by one with gradient: kind ``gradient_stops``)."""
    path = sorted((p for p in report.probes if p.kind in PATH_KINDS or p.kind == "output"),
                  key=lambda p: p.order)
    for a, b in zip(path, path[1:]):
        if a.requires_grad and not b.requires_grad:
            return a, b, "graph_ends"
    for k in range(len(path) - 1, -1, -1):
        if not path[k].carries:
            after = next((q for q in path[k + 1:] if q.carries), None)
            return (path[k], after, "gradient_stops") if after is not None else None
    return None


def break_between(report: FlowReport) -> str | None:
    """:func:`break_point` in words."""
    bp = break_point(report)
    if bp is None:
        return None
    a, b, kind = bp
    what = ("the autograd " if kind == "graph_ends" else "the ") + BREAK_POINT_WORDS[kind]
    return f"{what} between {a.name} ({probe_where(a)}) and {b.name} ({probe_where(b)})"


def _with_location(head: str, r: FlowReport, rest: str = "") -> str:
    where = located(r)
    return head + (f": {where}" if where else "") + (f"; {rest}" if rest else "")


def output_requires_grad(r: FlowReport) -> Finding:
    ok = r.output_requires_grad
    return Finding(
        "output_requires_grad", ok, value=ok, threshold=True,
        message="sampler output requires grad" if ok else _with_location(
            "sampler output does not require grad", r,
            "hint: look for @torch.no_grad() / torch.inference_mode() on the sampler or pipeline "
            "entry point, or a .detach() on its result"),
    )


def grad_reaches_output(r: FlowReport) -> Finding:
    out = next((p for p in r.probes if p.kind == "output"), None)
    if not r.loss_requires_grad:
        return Finding("grad_reaches_output", False, value=None, threshold="reached",
                       message=_with_location(
                           "the loss does not require grad, so no gradient can reach the output",
                           r, "hint: the loss (or the output) was computed without autograd"))
    ok = out is not None and out.reached and not out.nonfinite
    msg = (f"gradient reaches the output (|g| {fmt(out.norm)})" if ok else
           f"gradient does not reach the output ({out.status if out else 'not probed'})")
    return Finding("grad_reaches_output", ok, value=out.norm if out else None,
                   threshold="reached, finite", message=msg)


def loss_not_stationary(r: FlowReport) -> Finding:
    v = r.output_grad_max_abs
    if v is None:
        return Finding("loss_not_stationary", True, level="info", value=None, threshold="> 0",
                       message="no gradient at the output to judge stationarity by")
    ok = v > 0.0
    pp = r.path_probe
    if ok:
        msg = f"dL/d(output) is non-zero (max |g| {fmt(v)})"
    elif pp is not None and pp.dead:
        msg = _with_location(
            f"dL/d(output) is exactly zero (loss {fmt(r.loss)}) because the output does not "
            f"depend on z0: sent back along a seeded random output direction, the gradient at "
            f"z0 is exactly zero too (the path itself is dead, not only the loss stationary)", r,
            "hint: a saturated clamp, a round or a masked where makes the output constant in z0")
    else:
        alive = (f"; the path itself is alive (along a seeded random output direction "
                 f"|dz0| = {fmt(pp.z0_norm)})" if pp is not None else "")
        msg = (f"dL/d(output) is exactly zero (loss {fmt(r.loss)}): the loss sits at a "
               f"stationary point, so dL/dz0 is zero and an optimizer cannot move{alive}. hint: "
               f"a baseline or target made from the same z0 equals the output; draw the baseline "
               f"from different noise or start from a small perturbation of z0")
    return Finding("loss_not_stationary", ok, value=v, threshold="> 0", message=msg)


def grad_reaches_every_step(r: FlowReport) -> Finding:
    path = r.of_kind(*PATH_KINDS)
    if not path:  # "every step" over no step is not evidence: never a pass
        return Finding("grad_reaches_every_step", False, value=0, threshold="all",
                       message="no denoiser call and no sampler step was seen, so no step was "
                       "checked: wrap the denoiser with gradcheck.instrument() (or probe the "
                       "state with gradcheck.probe(x, name, step=i, kind='state')); a sampler "
                       "that never calls its denoiser is not sampling")
    missing = [p for p in path if not p.carries]
    ok = not missing
    prim = r.locator.primary if r.locator else None
    if missing and prim is not None and prim.cause == "constant_zero" and \
            all(p.status == "zero" for p in missing):
        # a structural zero (PNDM's last call is scaled by a zero coefficient): the path to z0
        # is intact, that call's result just cannot influence the output
        calls = sorted({p.call if p.call is not None else p.step for p in missing
                        if p.kind == "denoiser_out"})
        what = (f"denoiser call{'s' if len(calls) > 1 else ''} {ranges(calls)} "
                f"{'do' if len(calls) > 1 else 'does'} not influence the output" if calls else
                f"{len(missing)} step probe(s) cannot influence the output")
        return Finding("grad_reaches_every_step", True, level="warning",
                       value=len(path) - len(missing), threshold=len(path),
                       step=max((p.step for p in missing if p.step is not None), default=None),
                       message=f"{what} (its result is scaled by a constant 0 at {prim.location}, "
                       f"step {prim.step}): a wasted evaluation, not a cut; the other "
                       f"{len(path) - len(missing)} of {len(path)} step probes carry gradient")
    if ok:
        msg = f"non-zero gradient reaches all {len(path)} step probes; {step_picture(r)}"
    else:
        names = ", ".join(p.name + (" (exactly zero)" if p.status == "zero" else "")
                          for p in missing[:8]) + (", ..." if len(missing) > 8 else "")
        where = break_between(r)
        msg = _with_location(
            f"gradient misses {len(missing)} of {len(path)} step probes: {names}"
            f" ({steps_phrase('', [p.step for p in missing if p.step is not None]).strip()})", r,
            f"{step_picture(r)}" + (f"; {where}" if where else ""))
    return Finding("grad_reaches_every_step", ok, value=len(path) - len(missing),
                   threshold=len(path), message=msg,
                   step=max((p.step for p in missing if p.step is not None), default=None))


def grad_reaches_z0(r: FlowReport) -> Finding:
    z = next((p for p in r.probes if p.kind == "z0"), None)
    if z is None:
        return Finding("grad_reaches_z0", False, value=None, threshold="reached",
                       message="z0 was not probed")
    st = z.status
    if st == "ok":
        return Finding("grad_reaches_z0", True, value=z.norm, threshold="> 0, finite",
                       message=f"gradient reaches z0: |dL/dz0| {fmt(z.norm)}, "
                       f"mean |g| {fmt(z.mean_abs)}")
    where = break_between(r)
    if st in ("unreached", "not_in_graph"):
        head = "gradient does not reach z0 (z0.grad would be None)"
    elif st == "zero":
        head = "gradient reaches z0 but is exactly zero everywhere"
    else:
        head = f"gradient at z0 has {z.nonfinite} non-finite value(s)"
    msg = _with_location(head, r, step_picture(r) + (f"; {where}" if where else ""))
    if st in ("unreached", "not_in_graph", "zero"):
        msg += ". hint: look for .detach(), torch.no_grad(), .item() or a uint8 round trip there"
    return Finding("grad_reaches_z0", False, value=z.norm, threshold="> 0, finite", message=msg)


def grad_reaches_every_rank(r: FlowReport) -> Finding:
    """Distributed runs: every rank's shard of z0 receives a finite, non-zero gradient (the
    merged statistics are any-reached, so one rank whose shard is cut off would not show)."""
    name = "grad_reaches_every_rank"
    if not r.ranks or r.world_size < 2:
        return Finding(name, True, level="info", value=r.world_size, threshold=None,
                       message="one process")
    bad = [x for x in r.ranks if x.get("z0_status") != "ok"]
    if not bad:
        norms = [x["z0_norm"] for x in r.ranks]
        return Finding(name, True, value=len(r.ranks), threshold=len(r.ranks),
                       message=f"the shard of z0 on each of {len(r.ranks)} ranks receives "
                       f"gradient (|g| {fmt(min(norms))}..{fmt(max(norms))})")
    parts = []
    for x in bad[:4]:
        words = {"unreached": "no gradient", "not_in_graph": "no gradient (not in the graph)",
                 "zero": "an exactly zero gradient", "nonfinite": "a non-finite gradient"}
        parts.append(f"rank {x['rank']}'s shard of z0 receives "
                     f"{words.get(x.get('z0_status'), x.get('z0_status'))}"
                     + (f" (located: {x['located']})" if x.get("located") else ""))
    return Finding(name, False, value=len(r.ranks) - len(bad), threshold=len(r.ranks),
                   message="; ".join(parts) + ". hint: a rank whose shard is left out of the "
                   "loss, or a rank-dependent detach / no_grad / non-autograd collective")


def every_rank_passes(r: FlowReport) -> Finding:
    """Distributed runs: every rank's own diagnosis of its shard passes. The merged statistics
    are any-reached, so a cut on one rank only (its ``D_out[2]``, say) would not show in them;
    the run fails when any rank fails any check, naming the rank, the checks and the place."""
    name = "every_rank_passes"
    if not r.ranks or r.world_size < 2:
        return Finding(name, True, level="info", value=r.world_size, threshold=None,
                       message="one process")
    bad = [x for x in r.ranks if x.get("failed")]
    if not bad:
        return Finding(name, True, value=len(r.ranks), threshold=len(r.ranks),
                       message=f"each of the {len(r.ranks)} ranks passes every check on its "
                       f"shard")
    parts = [f"rank {x['rank']} fails {', '.join(x['failed'])}"
             + (f" (located: {x['located']})" if x.get("located") else "") for x in bad[:4]]
    return Finding(name, False, value=len(r.ranks) - len(bad), threshold=len(r.ranks),
                   message="; ".join(parts) + ". hint: a rank-dependent detach / no_grad / "
                   "non-autograd collective, or a shard left out of the loss")


def step_noise(r: FlowReport) -> Finding:
    expect = r.expect.get("step_noise", "none")
    eps = r.of_kind("step_noise")
    name = "step_noise"
    if expect in ("none", "unknown"):
        if not eps:
            return Finding(name, True, level="info", value=0, threshold=None,
                           message=f"no step noise probed (mode {r.mode})")
        dis = [p for p in eps if not p.connected_to_z0]
        return Finding(name, True, level="info", value=len(eps), threshold=None,
                       message=f"{len(eps)} step noise(s) injected, {len(dis)} not connected to z0")
    if not eps:
        return Finding(name, False, value=0, threshold=">= 1",
                       message=f"mode {r.mode} expects step noise but the sampler injected none. "
                       f"hint: churn is off (S_churn = 0, S_noise = 0, or sigma outside "
                       f"(S_min, S_max)); no step injects noise")
    if expect == "disconnected":
        dis = [p for p in eps if not p.connected_to_z0]
        return Finding(name, True, level="info", value=len(dis), threshold=None,
                       message=f"{len(dis)} of {len(eps)} step noises are not connected to z0 "
                       f"(fresh randn per step, steps {ranges(p.step for p in dis)}): they do "
                       f"not block dL/dz0, but they make the objective stochastic and cannot be "
                       f"optimised")
    if expect == "connected":
        bad = [p for p in eps if not (p.carries and p.connected_to_z0)]
        if not bad:
            norms = [p.norm for p in eps]
            return Finding(name, True, value=len(eps), threshold=len(eps),
                           message=f"all {len(eps)} step noises receive gradient "
                           f"(|g| {fmt(min(norms))}..{fmt(max(norms))}) and pass it on to z0")
        why = []
        for p in bad[:6]:
            if not p.connected_to_z0:
                why.append(f"{p.name} is not connected to z0"
                           + (" (it does not require grad: a fresh draw?)" if not p.requires_grad
                              else ""))
            else:
                why.append(f"{p.name} receives {'no' if not p.reached else 'zero'} gradient")
        rand = r.locator.randomness if r.locator else []
        drawn = "; ".join(f"fresh {e.op} at {e.location} enters step {e.step}" for e in rand[:4])
        return Finding(name, False, value=len(eps) - len(bad), threshold=len(eps),
                       step=bad[0].step,
                       message=f"{len(bad)} of {len(eps)} step noises do not carry gradient to z0: "
                       + "; ".join(why) + (f"; located: {drawn}" if drawn else
                                           (f"; located: {located(r)}" if located(r) else ""))
                       + ". hint: derive each step's noise from z0 "
                       "differentiably instead of drawing it with randn_like")
    # expect == "leaves": each step noise is its own learnable leaf
    bad = [p for p in eps if not p.carries]
    ok = not bad
    msg = (f"all {len(eps)} step-noise leaves receive gradient" if ok else
           f"{len(bad)} of {len(eps)} step-noise leaves receive no gradient: "
           + ", ".join(f"{p.name} ({p.status})" for p in bad[:6]))
    return Finding(name, ok, value=len(eps) - len(bad), threshold=len(eps), message=msg,
                   step=bad[0].step if bad else None)


def _not_scanned(name: str) -> Finding:
    """The finding of a check that reads the provenance pass, when it did not run."""
    return Finding(name, True, level="info", value=None, threshold=None,
                   message="not scanned (the provenance pass did not run; locate='always' runs "
                   "it)")


def fresh_randomness(r: FlowReport) -> Finding:
    """Fresh random draws (not derived from z0) mixed into values that depend on z0, as found by
    the locator's provenance pass: a warning (they do not block dL/dz0, they make the objective
    stochastic and cannot be optimised). The step_noise check makes it an error where the mode
    promises connected step noise."""
    name = "fresh_randomness"
    loc = r.locator
    if loc is None or not loc.ran:
        return _not_scanned(name)
    rand = loc.randomness
    if not rand:
        return Finding(name, True, level="info", value=0, threshold=None,
                       message="no fresh random draw enters a value that depends on z0")
    sites: dict[tuple[str, str], list[int]] = {}
    for e in rand:
        at = (e.location or "?") + (f" (in {e.function}, called from {e.via})" if e.via else "")
        sites.setdefault((e.op, at), []).append(e.step)
    where = "; ".join(
        f"{op} at {at}" + (f" (steps {ranges(s for s in st if s is not None)})"
                           if any(s is not None for s in st) else "")
        for (op, at), st in list(sites.items())[:3])
    more = f" (and {len(rand) - 50}+ more)" if len(rand) >= 50 else ""
    return Finding(name, True, level="warning", value=len(rand), threshold=0,
                   message=f"{len(rand)}{more} fresh random draw(s) not derived from z0 enter the "
                   f"z0-dependent state: {where}. They do not block dL/dz0, but they make the "
                   f"objective stochastic and cannot be optimised. hint: derive the step noise "
                   f"from z0 (gradcheck.adapters noise='learnable') or make it a learnable leaf")


def no_proven_bias(r: FlowReport) -> Finding:
    """A value computed from z0 that left autograd (``float()``, ``.item()``, ``.tolist()``) and
    came back into what the loss depends on, or a write behind autograd's back (through
    ``.data``, in place under ``no_grad``) on a z0-dependent value: the gradient is provably
    wrong, whatever the numeric check saw along its one direction. Values that left autograd
    only to steer control flow or logging are reported, not failed."""
    name = "no_proven_bias"
    loc = r.locator
    if loc is None or not loc.ran:
        return _not_scanned(name)
    if loc.bias is not None:
        return Finding(name, False, value=loc.bias.op, threshold=None, step=loc.bias.step,
                       message=f"the gradient is provably wrong: {describe_break(loc.bias)}. "
                       f"The numeric check, along one direction, need not see it. hint: keep the "
                       f"value in torch (x.std(), not float(x.std())), or write without .data "
                       f"and outside no_grad")
    left = [e for e in loc.events if e.kind == "escape"]
    said = "; ".join(f"{e.op} at {e.location}" for e in left[:3])
    return Finding(name, True, value=0, threshold=0,
                   message="no value computed from z0 left autograd and came back into the loss, "
                   "and nothing was written behind autograd's back"
                   + (f"; {len(left)} value(s) left it only to steer control flow or logging "
                      f"(reported, not failed): {said}" if left else ""))


def trace_hygiene(r: FlowReport) -> Finding:
    h = r.hygiene
    problems = []
    if h.hooks_left:
        problems.append(f"{h.hooks_left} of {h.hooks_registered} hooks still registered")
    if h.grad_mode_after != h.grad_mode_before:
        problems.append(f"grad mode {h.grad_mode_before} before, {h.grad_mode_after} after")
    if h.sampler_changed_grad_mode:
        problems.append("the sampler changed the global grad mode and left it changed "
                        "(torch.set_grad_enabled without restoring; gradcheck restored it)")
    ok = not problems
    return Finding("trace_hygiene", ok, value=h.hooks_left, threshold=0,
                   message=f"all {h.hooks_registered} hooks removed, grad mode restored" if ok
                   else "; ".join(problems))


def passes_ran(r: FlowReport) -> Finding:
    """The passes gradcheck adds (the numeric check's forwards under no_grad, the shadow, the
    Adam steps, the path probe, the locator) ran; a sampler that raises in one of them (a hook
    registered unconditionally, which needs a tensor that requires grad) is said, with where,
    and that pass's evidence is missing."""
    if not r.pass_errors:
        return Finding("passes_ran", True, level="info", value=0, threshold=0,
                       message="every pass gradcheck added ran")
    said = "; ".join(
        f"{e.phase}: {e.type}: {e.message.rstrip('.')}"
        + (f" at {e.location}" + (f" (in {e.function})" if e.function else "")
           if e.location else "") for e in r.pass_errors[:4])
    return Finding("passes_ran", True, level="warning", value=len(r.pass_errors), threshold=0,
                   message=f"the sampler raised in {len(r.pass_errors)} pass(es) gradcheck added "
                   f"(under no_grad, or at a perturbed z0): {said}; their evidence is missing. A "
                   f"sampler that registers a hook or asserts requires_grad unconditionally "
                   f"fails in inference too: check x.requires_grad first")


def sampler_ran(r: FlowReport) -> Finding:
    """The sampler's forward pass and the backward pass ran without raising; when one raised,
    where (step, the user's file:line) and torch's own message."""
    e = r.raised
    if e is None:
        return Finding("sampler_ran", True, value=None, threshold=None,
                       message="the sampler's forward pass and the backward pass ran")
    where = ", ".join(x for x in (
        f"at step {e.step}" if e.step is not None else None,
        f"at {e.location}" + (f" (in {e.function})" if e.function else "") if e.location
        else None) if x)
    return Finding("sampler_ran", False, value=e.type, threshold=None, step=e.step,
                   message=f"the sampler raised {e.type} in the {e.phase} pass"
                           + (f" {where}" if where else "") + f": {e.message.rstrip('.')}"
                           + (f". hint: {e.hint}" if e.hint else ""))


def grad_allowed(r: FlowReport) -> Finding:
    """With ``allow_grad``: the grad-disabling sites that were neutralised, as what to change
    for the gradient to flow (a warning: the verdict holds only with those changes)."""
    name = "grad_allowed"
    if r.allowed_grad is None:
        return Finding(name, True, level="info", value=None, threshold=None,
                       message="allow_grad not asked: grad-disabling sites were left as they are")
    if not r.allowed_grad:
        return Finding(name, True, level="info", value=0, threshold=0,
                       message="allow_grad: no grad-disabling site was met; the sampler runs "
                               "with grad as it is")
    said = "; ".join(f"{s.api} on {s.function} ({s.location}, {s.count}x)"
                     if s.api.startswith("@") else f"{s.api} in {s.function} ({s.location}, "
                     f"{s.count}x)" for s in r.allowed_grad)
    return Finding(name, False, level="warning", value=len(r.allowed_grad), threshold=0,
                   message=f"this verdict holds with grad allowed: to make this differentiable, "
                           f"change: {said}")


CHECKS: tuple[Callable[[FlowReport], Finding], ...] = (
    output_requires_grad,
    grad_reaches_output,
    loss_not_stationary,
    grad_reaches_every_step,
    grad_reaches_z0,
    grad_reaches_every_rank,
    every_rank_passes,
    step_noise,
    grad_scale,
    fresh_randomness,
    no_proven_bias,
    numeric_directional,
    sampler_deterministic,
    compiled_matches_eager,
    optimizer_changes_z0,
    loss_moves,
    grad_allowed,
    passes_ran,
    trace_hygiene,
)


def run_checks(report: FlowReport) -> list[Finding]:
    """Every check, in a fixed order (the per-rank one only for distributed runs)."""
    if report.raised is not None:  # nothing past the exception ran: say that, and hygiene
        return [sampler_ran(report), grad_allowed(report), trace_hygiene(report)]
    per_rank = (grad_reaches_every_rank, every_rank_passes)
    return [check(report) for check in CHECKS
            if (check not in per_rank or report.world_size > 1)
            and (check is not compiled_matches_eager or report.compiled is not None)]
