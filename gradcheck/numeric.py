"""Directional numeric check: finite differences of the loss against reverse mode.

    fd(h)   = (L(z0 + h v) - L(z0 - h v)) / 2h          (central differences, v a seeded unit vector)
    reverse = <v, dL/dz0>                                (from the backward pass being diagnosed)

Reverse mode, not forward mode: forward AD ignores ``no_grad`` and would call a broken sampler
healthy (shared/reference/anchors.md). The cost is 2 forward passes per step size, independent of
the size of z0. The step h is swept over a few values scaled to z0's RMS, since truncation error
grows with h and round-off error with 1/h; the best-agreeing h is reported. The tolerance is
``rtol * max(|fd|, |reverse|)`` plus the round-off floor ``c * eps_dtype * |L| / h``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch

from .records import NumericResult

#: Per dtype: step sizes (relative to z0's RMS) and the relative tolerance.
SETTINGS: dict[torch.dtype, tuple[tuple[float, ...], float]] = {
    torch.float64: ((1e-3, 1e-4, 1e-5), 1e-5),
    torch.float32: ((3e-2, 1e-2, 3e-3), 2e-2),
    torch.float16: ((3e-1, 1e-1, 3e-2), 1e-1),
    torch.bfloat16: ((3e-1, 1e-1, 3e-2), 1e-1),
}
ROUNDOFF_FACTOR = 8.0
#: the relative step of a one-sided difference from the recorded loss (the ``quick`` level, and
#: the ``default`` level in float64): small enough that its truncation error (h/2 v'Hv) stays well under the
#: precision's tolerance, large enough that round-off does; half precision has no such step and
#: differences centrally
ONE_SIDED = {torch.float64: 1e-6, torch.float32: 3e-3}
#: a one-sided difference is accepted only where its round-off allowance is at most this part of
#: the relative tolerance (so the check's stated power holds); otherwise the central pair decides
ONE_SIDED_FLOOR = 0.25


def unit_direction(like: torch.Tensor, seed: int,
                   reduce: Callable[[float], float] | None = None,
                   shard_of: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """A seeded random unit vector shaped like ``like`` (drawn on the CPU, so device-independent).
    With ``reduce`` (a sum over processes) and ``shard_of`` (this rank's part of a tensor drawn
    whole, :meth:`gradcheck.policy.Sharded.shard_of`), ``like`` is one shard and the vector is
    this shard of the very unit vector one process would draw."""
    g = torch.Generator().manual_seed(int(seed))
    if shard_of is None:
        v = torch.randn(like.shape, generator=g, dtype=torch.float64)
    else:
        v = shard_of(like, lambda shape: torch.randn(shape, generator=g, dtype=torch.float64))
    norm = float(torch.linalg.vector_norm(v)) if reduce is None else \
        reduce(float(v.square().sum())) ** 0.5
    return (v / norm).to(device=like.device, dtype=like.dtype)


#: Directions per working precision. One direction in float64 catches a gradient 0.06% off
#: with 99% probability; 7 in float32 catch 2% (see ``detectable``; in float16/bfloat16, 9.5%:
#: a float64 shadow run, where the sampler can be cast, reaches 0.06%). Each further direction
#: costs 2 forward passes at the first one's step; one more chance to straddle a clipped
#: sampler's kinks, which ``judge_branches`` recognises by the branches the two ends took.
DIRECTIONS = {torch.float64: 1, torch.float32: 7, torch.float16: 7, torch.bfloat16: 7}
#: the power the check is stated at
POWER = 0.99


def detectable(rtol: float, directions: int, power: float = POWER,
               floor: float = 0.0) -> float:
    """The smallest relative gradient error |e|/|g| that ``directions`` independent random
    directions catch with probability ``power``, at relative tolerance ``rtol`` plus a
    round-off allowance ``floor`` (in units of the typical |<v, g>|). The model: along a random
    unit v of a high dimension, <v, g> and <v, e> (e orthogonal to g, the worst orientation;
    the part of e along g is caught by :func:`consistent_error`) are independent normals, and a
    direction catches e where |<v, e>| > (rtol |<v, g>| + floor) / (1 - rtol) (the test's
    rtol of max(|fd|, |reverse|), taken at its widest). Without a floor, each direction's
    chance is 1 - (2/pi) atan(rtol / ((1 - rtol) r)) (a Cauchy ratio)."""
    per = 1.0 - (1.0 - power) ** (1.0 / directions)  # each direction must catch it this often
    if floor <= 0:
        return rtol / (1 - rtol) / math.tan(math.pi / 2 * (1.0 - per))
    lo, hi = 0.0, 100.0
    if _catch(hi, rtol, floor) < per:
        return math.inf
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _catch(mid, rtol, floor) >= per else (mid, hi)
    return hi


def _catch(r: float, rtol: float, floor: float, n: int = 400) -> float:
    """P(|r Z1| > (rtol |Z2| + floor) / (1 - rtol)) for independent standard normals (midpoint
    rule over Z2 in [0, 8])."""
    if r <= 0:
        return 0.0
    total, w = 0.0, 8.0 / n
    for i in range(n):
        z = (i + 0.5) * w
        thr = (rtol * z + floor) / ((1 - rtol) * r)
        total += math.exp(-z * z / 2) * math.erfc(thr / math.sqrt(2))
    return total * w * math.sqrt(2 / math.pi)


def directional_check(loss_at: Callable[[torch.Tensor], float], z0: torch.Tensor,
                      grad: torch.Tensor | None, *, seed: int = 0,
                      working: torch.dtype | None = None,
                      reduce: Callable[[float], float] | None = None,
                      shard_of: Callable[..., torch.Tensor] | None = None,
                      directions: int | None = None,
                      straddles: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
                      full_sweep: bool = False, l0: float | None = None) -> NumericResult:
    """Finite differences of ``loss_at`` along seeded unit directions against ``grad``: the
    first direction over a sweep of step sizes, each further one at the step that agreed best
    (2 forward passes; a full sweep only if it disagrees there). The result is the first
    direction's, or the worst one that disagrees; ``detectable`` states the power.

    ``directions``: default by working precision (``DIRECTIONS``). Other arguments as
    :func:`one_direction`.
    """
    prec = working or z0.dtype
    k = directions or DIRECTIONS.get(prec, 8)
    first = one_direction(loss_at, z0, grad, seed=seed, working=working, reduce=reduce,
                          shard_of=shard_of, straddles=straddles, full_sweep=full_sweep, l0=l0)
    main, others = first, []
    # the further directions at the first one's central step, each one-sided first where the
    # first direction may be (one forward pass instead of two; the central pair on disagreement)
    one = bool(first.sweep) and bool(first.sweep[0].get("one_sided"))
    if first.skipped is None and not below_round_off(first):
        for j in range(1, k):
            res = one_direction(loss_at, z0, grad, seed=seed + 7919 * j, working=working,
                                reduce=reduce, shard_of=shard_of,
                                steps=None if one else (first.eps,),
                                l0=None if full_sweep else l0)
            if res.verdict != "agrees" and not below_round_off(res):
                # a full sweep (and the kink judgement) for this one
                res = one_direction(loss_at, z0, grad, seed=seed + 7919 * j, working=working,
                                    reduce=reduce, shard_of=shard_of, straddles=straddles)
            others.append({"direction_seed": res.direction_seed, "eps": res.eps, "fd": res.fd,
                           "reverse": res.reverse, "rel_error": res.rel_error,
                           "roundoff_floor": res.atol, "verdict": res.verdict})
            rank = {"disagrees": 3, "inconclusive": 2}
            if rank.get(res.verdict, 0) > rank.get(main.verdict, 0):
                main = res
            if main.verdict == "disagrees":  # failed on smooth evidence: more cannot undo it
                break
    main.directions = 1 if below_round_off(first) else k
    rows = [first.__dict__ | {"roundoff_floor": first.atol}] + others
    if main.verdict == "agrees":
        main.consistent = consistent_error(rows, first.rtol)
        if main.consistent and main.consistent["fails"]:
            main.verdict, main.note = "disagrees", consistent_note(main.consistent)
    # the power at the tolerance actually applied: rtol and the largest round-off allowance
    # of the directions taken (relative to their typical |<v, dL/dz0>|); none where even a
    # gradient 100% off would have agreed (the loss does not change measurably along v)
    main.detectable = _power(rows, first.rtol, k)
    main.others = [o for o in others if o["direction_seed"] != main.direction_seed]
    if main is not first:
        main.others.insert(0, {"direction_seed": first.direction_seed, "eps": first.eps,
                               "fd": first.fd, "reverse": first.reverse,
                               "rel_error": first.rel_error, "verdict": first.verdict})
    return main


#: one-sided Student t quantiles at 1 - 1e-4 by degrees of freedom (3..12; 5.0 beyond): how
#: many standard errors a consistent offset must clear before it counts
T_QUANTILE = {3: 22.2, 4: 13.0, 5: 9.68, 6: 8.02, 7: 7.06, 8: 6.44, 9: 6.01, 10: 5.69,
              11: 5.45, 12: 5.26}


def consistent_error(rows: list[dict], rtol: float) -> dict | None:
    """A gradient off by the same relative amount along every direction (a scaled path: a hook
    or a custom backward that multiplies) shows as ``reverse_j = (1 + s) fd_j``. Each direction
    alone may stay within ``rtol``; all of them together estimate s by least squares through
    the origin, with a standard error from their own scatter (so from the finite differences'
    real error, not the allowance). It fails where s is material (over ``rtol / 2``) even at
    its 1e-4 lower confidence bound. None with fewer than 4 directions on smooth evidence."""
    pts = [(r["fd"], r["reverse"]) for r in rows
           if r.get("verdict") == "agrees" and r.get("fd") is not None]
    k = len(pts)
    sxx = sum(fd * fd for fd, _ in pts)
    if k < 4 or sxx <= 0:
        return None
    s = sum((rev - fd) * fd for fd, rev in pts) / sxx
    resid = sum((rev - fd - s * fd) ** 2 for fd, rev in pts) / (k - 1)
    se = math.sqrt(resid / sxx)
    t = T_QUANTILE.get(k - 1, 5.0)
    bound = max(0.0, abs(s) - t * se)
    return {"offset": s, "std_error": se, "lower_bound": bound, "threshold": rtol / 2,
            "directions": k, "fails": bound > rtol / 2, "detectable": rtol / 2 + t * se}


def consistent_note(c: dict) -> str:
    return (f"reverse mode is off by the same {c['offset']:+.2%} (standard error "
            f"{c['std_error']:.2%}) along all {c['directions']} directions: each direction alone "
            f"is within the tolerance, together they are sure (at least {c['lower_bound']:.2%} "
            f"off at 1e-4 confidence, over the {c['threshold']:.2%} allowed): a path scaled "
            f"by a hook, a custom backward or a wrong constant")


def _power(rows: list[dict], rtol: float, k: int) -> float | None:
    typical = math.sqrt(sum(max(abs(r["fd"] or 0.0), abs(r["reverse"] or 0.0)) ** 2
                            for r in rows) / len(rows))
    if typical <= 0:
        return None
    d = detectable(rtol, k, floor=max(r["roundoff_floor"] for r in rows) / typical)
    return float(f"{d:.4g}") if math.isfinite(d) else None  # a statement, not a measurement


def one_direction(loss_at: Callable[[torch.Tensor], float], z0: torch.Tensor,
                  grad: torch.Tensor | None, *, seed: int = 0,
                  working: torch.dtype | None = None,
                  reduce: Callable[[float], float] | None = None,
                  shard_of: Callable[..., torch.Tensor] | None = None,
                  steps: tuple[float, ...] | None = None,
                  straddles: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
                  full_sweep: bool = False, l0: float | None = None) -> NumericResult:
    """Compare finite differences of ``loss_at`` along a seeded unit direction with ``grad``.

    Args:
        loss_at: ``z -> float``, the loss of the sampler at z (deterministic, no autograd needed).
        z0: the point of the check.
        grad: dL/dz0 from reverse mode, or None when no gradient reached z0 (taken as 0).
        seed: seeds the direction.
        working: the precision the sampler really computes in, if lower than z0's (a float32
            step inside a float64 run): its step sizes, tolerance and machine epsilon are used.
        reduce: sums a float over processes when z0 is one shard of a distributed batch (the
            direction is then a unit vector of the whole z0 and ``loss_at`` the global loss).
        shard_of: with ``reduce``, cuts this rank's part out of a tensor drawn whole, so the
            direction is the single-process one.
        steps: absolute step sizes to use instead of the precision's sweep.
        straddles: ``(z + hv, z - hv) -> bool``, whether the two ends took different branches
            of a piecewise op (:mod:`gradcheck.branches`; two forward passes): asked only on
            disagreement at every step size, to judge on the steps whose ends share branches.
        full_sweep: difference at every step size of the precision even when the preferred one
            agrees (``checks="full"``); by default the rest of the sweep runs only on
            disagreement.
        l0: the loss at z0 as recorded: first a one-sided difference from it (one forward
            pass; the ``quick`` and ``default`` levels), accepted where it agrees within the
            tolerance and its round-off allowance stays under ``ONE_SIDED_FLOOR`` of it; else
            the central differences decide (not with ``full_sweep``).
    """
    prec = working or z0.dtype
    hs, rtol = SETTINGS.get(prec, SETTINGS[torch.float32])
    eps_mach = torch.finfo(prec).eps
    z = z0.detach()
    red = reduce or (lambda x: x)
    v = unit_direction(z, seed, reduce, shard_of)
    reverse = red(0.0 if grad is None else
                  float((grad.detach().to(torch.float64) * v.double()).sum()))
    scale = max(1.0, (red(float(z.double().square().sum())) / red(float(z.numel()))) ** 0.5)
    plan = list(steps or [rel * scale for rel in hs])
    early = steps is None and not full_sweep
    if early and len(plan) > 1:
        # the precision's preferred step first; the rest of the sweep only if it disagrees
        # there (agreement at one step is agreement of the sweep's best: same verdict, 2
        # forward passes instead of 6)
        plan.insert(0, plan.pop(len(plan) // 2))
    result = partial(_result, z0.dtype, seed, working, reverse, rtol)
    one = ONE_SIDED.get(prec) if l0 is not None and not full_sweep and math.isfinite(l0) \
        else None
    row = {"eps": one * scale} if one is not None else None
    verdict, note = _one_sided(loss_at, z, v, l0, row, reverse, rtol, eps_mach, plan, prec) \
        if row is not None else (None, None)
    if verdict is not None:
        return result(row, [row], verdict, note)
    sweep, losses, best = _central(loss_at, z, v, plan, reverse, rtol, eps_mach, early)
    verdict = "agrees"
    disagree = best["abs_error"] > rtol * max(abs(best["fd"]), abs(reverse)) + \
        best["roundoff_floor"]
    if disagree and len(sweep) > 1 and straddles is not None:
        # only when they disagree: do the ends lie on other branches of a piecewise op (a
        # clamp, clip_sample, relu, abs, max between z0 - h v and z0 + h v)?
        verdict, note, best = judge_branches(loss_at, z, v, sweep, losses, reverse, rtol,
                                             eps_mach, straddles)
    elif disagree and len(sweep) > 1:
        # one more forward pass, only when they disagree: is it the sampler's kink or the
        # gradient? (a clamp, clip_sample, relu, abs, max between z0 - h v and z0 + h v)
        verdict, note = judge_kink(loss_at(z), sweep, losses, reverse, rtol)
    elif disagree:
        verdict = "disagrees"  # at one step size: the caller sweeps before it judges
    mag = max(abs(best["fd"]), abs(reverse))
    if verdict == "agrees" and best["roundoff_floor"] >= mag:
        # agreement only because both sides are under the round-off allowance: the loss does
        # not change measurably along v at this precision, so even a gradient 100% off would
        # pass. Said, never counted as evidence
        verdict = "inconclusive"
        note = _below_round_off(prec, reverse, best["fd"], best["roundoff_floor"], best["eps"])
    return result(best, sweep, verdict, note)


def _one_sided(loss_at: Callable[[torch.Tensor], float], z: torch.Tensor, v: torch.Tensor,
               l0: float, row: dict, reverse: float, rtol: float, eps_mach: float,
               plan: list[float], prec: torch.dtype) -> tuple[str | None, str | None]:
    """A one-sided difference from the recorded loss (one forward pass) at ``row["eps"]``; fills
    ``row`` and returns its verdict when it decides (agrees within the tolerance with a small
    round-off allowance, or is below round-off even at the sweep's largest step), else None."""
    h = row["eps"]
    lp = loss_at(z + h * v)
    fd = (lp - l0) / h
    floor = ROUNDOFF_FACTOR * eps_mach * max(abs(lp), abs(l0)) / h
    err = abs(fd - reverse)
    row.update(fd=fd, abs_error=err, roundoff_floor=floor, one_sided=1.0)
    mag = max(abs(fd), abs(reverse))
    allowed = rtol * mag
    if floor >= mag and floor * h / max(plan) >= mag:
        # not even the sweep's largest central step would rise above the round-off
        return "inconclusive", _below_round_off(prec, reverse, fd, floor, h)
    if err <= allowed + floor and floor <= ONE_SIDED_FLOOR * allowed:
        return "agrees", ("one-sided difference from the recorded loss (1 forward pass); a "
                          "disagreement would have been judged by central differences")
    return None, None


def _central(loss_at: Callable[[torch.Tensor], float], z: torch.Tensor, v: torch.Tensor,
             plan: list[float], reverse: float, rtol: float, eps_mach: float,
             early: bool) -> tuple[list[dict], list[tuple[float, float]], dict]:
    """Central differences at the step sizes of ``plan`` (``early``: stop after the first if it
    agrees): (the sweep, largest step first; the losses at its ends; the row of least error)."""
    sweep, losses = [], []
    best = None
    for i, h in enumerate(plan):
        lp, lm = loss_at(z + h * v), loss_at(z - h * v)
        losses.append((lp, lm))
        fd = (lp - lm) / (2 * h)
        floor = ROUNDOFF_FACTOR * eps_mach * max(abs(lp), abs(lm)) / h
        err = abs(fd - reverse)
        row = {"eps": h, "fd": fd, "abs_error": err, "roundoff_floor": floor}
        sweep.append(row)
        if best is None or err < best["abs_error"]:
            best = row
        if i == 0 and early and err <= rtol * max(abs(fd), abs(reverse)) + floor:
            break
    order = sorted(range(len(sweep)), key=lambda i: -sweep[i]["eps"])  # largest step first
    return [sweep[i] for i in order], [losses[i] for i in order], best


def _result(dtype: torch.dtype, seed: int, working: torch.dtype | None, reverse: float,
            rtol: float, best: dict, sweep: list[dict], verdict: str,
            note: str | None) -> NumericResult:
    mag = max(abs(best["fd"]), abs(reverse))
    return NumericResult(
        dtype=str(dtype).replace("torch.", ""), direction_seed=int(seed), eps=best["eps"],
        fd=best["fd"], reverse=reverse, abs_error=best["abs_error"],
        rel_error=best["abs_error"] / mag if mag > 0 else 0.0, rtol=rtol,
        atol=best["roundoff_floor"], sweep=sweep,
        working_dtype=str(working).replace("torch.", "") if working is not None else None,
        verdict=verdict, note=note,
    )


#: how a result below the round-off begins its note (no further directions or sweeps are bought
#: for it: at this precision they would stay below it too)
BELOW_ROUND_OFF = "the loss changes along v by less than its round-off"


def below_round_off(res: NumericResult) -> bool:
    return res.verdict == "inconclusive" and (res.note or "").startswith(BELOW_ROUND_OFF)


def _below_round_off(prec: torch.dtype, reverse: float, fd: float, floor: float,
                     h: float) -> str:
    what = ("the loss is flat along v at float64 resolution" if prec == torch.float64 else
            "a float64 shadow run (shadow=True, --checks full) can")
    return (f"{BELOW_ROUND_OFF} at "
            f"{str(prec).replace('torch.', '')} (|<v, dL/dz0>| {abs(reverse):.2e}, |finite "
            f"difference| {abs(fd):.2e}, round-off allowance {floor:.2e} at step {h:.1e}): the "
            f"difference cannot tell a right gradient from a wrong one here; {what}")


def judge_branches(loss_at: Callable[[torch.Tensor], float], z: torch.Tensor, v: torch.Tensor,
                   sweep: list[dict[str, float]], losses: list[tuple[float, float]],
                   reverse: float, rtol: float, eps_mach: float,
                   straddles: Callable[[torch.Tensor, torch.Tensor], bool]
                   ) -> tuple[str, str | None, dict[str, float]]:
    """The differences disagree at every step size: judge on the steps whose two ends took the
    same branch of every piecewise op (smooth evidence), with one smaller step if every one
    straddles a kink. Returns the verdict (``disagrees`` on smooth evidence, ``kink`` when the
    smooth steps agree, ``inconclusive`` when no step is smooth and no one-sided derivative
    matches), what was seen, and the row judged on. Each row gets ``straddles``."""
    smooth = []
    # the best-conditioned step first (the sweep's least error), then the others by error: the
    # first whose ends lie on the same branches is the smooth evidence judged on
    for row in sorted(sweep, key=lambda r: r["abs_error"]):
        h = row["eps"]
        row["straddles"] = float(bool(straddles(z + h * v, z - h * v)))
        if not row["straddles"]:
            smooth = [row]
            break
    if not smooth:  # z0 lies very close to a kink: one smaller step
        h = min(r["eps"] for r in sweep) / 10
        lp, lm = loss_at(z + h * v), loss_at(z - h * v)
        fd = (lp - lm) / (2 * h)
        row = {"eps": h, "fd": fd, "abs_error": abs(fd - reverse),
               "roundoff_floor": ROUNDOFF_FACTOR * eps_mach * max(abs(lp), abs(lm)) / h,
               "straddles": float(bool(straddles(z + h * v, z - h * v)))}
        sweep.append(row)
        losses.append((lp, lm))
        smooth = [row] if not row["straddles"] else []
    if smooth:
        best = min(smooth, key=lambda r: r["abs_error"])
        mag = max(abs(best["fd"]), abs(reverse))
        agree = best["abs_error"] <= rtol * mag + best["roundoff_floor"]
        crossed = [r["eps"] for r in sweep if r.get("straddles")]
        if agree and best["roundoff_floor"] > rtol * mag:  # round-off swamps that step
            return "inconclusive", (f"every step down to {best['eps']:.1e} straddles a kink but "
                                    f"that one, whose round-off ({best['roundoff_floor']:.1e}) "
                                    f"is too large to tell a {rtol:.0%} error"), best
        if agree and not crossed:  # no piecewise op took another branch: no kink to claim
            return "disagrees", None, min(sweep, key=lambda r: r["abs_error"])
        if agree:
            return "kink", (f"the difference straddles a kink of the sampler at step(s) "
                            f"{', '.join(f'{h:.1e}' for h in crossed)} (a piecewise op took "
                            f"another branch between z0 - hv and z0 + hv); at step "
                            f"{best['eps']:.1e} both ends lie on the same branches and agree"
                            ), best
        return "disagrees", (f"at step {best['eps']:.1e} both ends lie on the same branches of "
                             f"every piecewise op (no kink between them), and they disagree"
                             if crossed else None), best
    # every step straddles: the old judgement, but never a failure on straddled evidence
    order = sorted(range(len(sweep)), key=lambda i: -sweep[i]["eps"])
    verdict, note = judge_kink(loss_at(z), [sweep[i] for i in order],
                               [losses[i] for i in order], reverse, rtol)
    best = min(sweep, key=lambda r: r["abs_error"])
    if verdict == "disagrees":
        verdict = "inconclusive"
        note = (f"every step down to {min(r['eps'] for r in sweep):.1e} straddles a kink (a "
                f"piecewise op took another branch between z0 - hv and z0 + hv) and no one-sided "
                f"derivative matches reverse mode {reverse:.6e}: no smooth evidence either way")
    return verdict, note, best


def judge_kink(l0: float, sweep: list[dict[str, float]], losses: list[tuple[float, float]],
               reverse: float, rtol: float) -> tuple[str, str | None]:
    """Central differences disagree with reverse mode at every step size: is the gradient wrong,
    or does the difference straddle a kink of a piecewise-smooth sampler (clamp, clip_sample,
    relu, abs, max)? With L(z0) = ``l0``, each step size h gives the second difference
    s(h) = L(z0 + hv) - 2 L(z0) + L(z0 - hv). Where the loss is smooth, s(h) ~ h^2 (its
    curvature); across a kink, s(h) ~ |jump in slope| * h; across a jump in value (round, a
    staircase), s(h) does not shrink. Only the kink's h^1 (above round-off, over the whole sweep)
    excuses the disagreement; then reverse mode, which follows the branch z0 is on, must match
    the one-sided derivative of one side. Returns ``disagrees`` (smooth evidence against reverse mode: a
    wrong gradient, judged as before), ``kink`` (straddled, reverse mode matches a one-sided
    derivative) or ``inconclusive`` (straddled, no one-sided match), and what was seen; fills
    each sweep row's one-sided derivatives and curvature."""
    rows = []
    for row, (lp, lm) in zip(sweep, losses):
        h, floor = row["eps"], row["roundoff_floor"]
        second = lp - 2 * l0 + lm
        row["forward"], row["backward"] = (lp - l0) / h, (l0 - lm) / h
        row["curvature"] = second / (h * h)
        rows.append((h, abs(second) > 2 * floor * h, row))  # floor * h / 8 = eps |L|
    large, small = rows[0], rows[-1]  # the sweep goes from the largest step to the smallest
    if not (large[1] and small[1] and large[0] > small[0]):
        return "disagrees", None
    # s(h) ~ h^p: p = 2 smooth, p = 1 a kink (a jump in slope), p = 0 a jump in value (round,
    # a staircase, a cut): only a kink excuses the disagreement
    s_large = abs(large[2]["curvature"]) * large[0] ** 2
    s_small = abs(small[2]["curvature"]) * small[0] ** 2
    p = math.log(s_large / s_small) / math.log(large[0] / small[0])
    # the other signature: central estimates that are not monotone in h (smooth truncation
    # error is c h^2: monotone) beyond round-off, while s(h) still shrinks (not a staircase)
    fds = [row["fd"] for _, _, row in rows]
    off = max(0.0, min(fds[0], fds[-1]) - fds[1], fds[1] - max(fds[0], fds[-1])) \
        if len(fds) == 3 else 0.0
    pure = 0.6 < p < 1.4
    wavy = p > 0.6 and off > 2 * max(r["roundoff_floor"] for _, _, r in rows)
    if not (pure or wavy):
        return "disagrees", None
    seen = (f"L(z0+hv) - 2L(z0) + L(z0-hv) scales like h^{p:.2f} over steps {large[0]:.1e} to "
            f"{small[0]:.1e}: a jump in slope, not curvature (h^2) or a jump in value (h^0)"
            if pure else f"the central estimates {', '.join(f'{f:.4e}' for f in fds)} are not "
            f"monotone in the step size, as a smooth loss's are")
    for h, significant, row in reversed(rows):  # the smallest step first
        for side in ("forward", "backward"):
            d = row[side]
            if abs(d - reverse) <= rtol * max(abs(d), abs(reverse)) + 2 * row["roundoff_floor"]:
                return "kink", (f"the difference straddles a kink of the sampler ({seen}); "
                                f"reverse mode {reverse:.6e} matches the {side} one-sided "
                                f"derivative {d:.6e} at step {h:.1e}: consistent with the "
                                f"branch z0 is on")
    if not pure:  # the weaker signature excuses a match only, never a mismatch
        return "disagrees", None
    return "inconclusive", (f"the difference straddles a kink of the sampler ({seen}) and no "
                            f"one-sided derivative matches reverse mode {reverse:.6e}: no smooth "
                            f"evidence either way")
