"""The checks of ``gradcheck optimize`` (pure, like :mod:`gradcheck.checks`): ``OptimizeResult
-> [Finding]``, so a saved optimize.json is judged again the same way."""
from __future__ import annotations

import math

from .records import Finding, OptimizeResult


def chi_band(d: int, batch: int) -> tuple[float, float]:
    """The mean and the standard deviation of the mean norm of ``batch`` independent N(0, I_d)
    draws: ||z|| is chi(d)-distributed, E||z|| = sqrt(2) Gamma((d+1)/2) / Gamma(d/2) and
    Var||z|| = d - E||z||^2; the mean of ``batch`` of them has that variance over ``batch``."""
    mu = math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    return mu, math.sqrt(max(d - mu * mu, 0.0) / max(1, batch))


#: How many standard deviations of the batch's mean norm an honest Gaussian z0 may stray
#: (|Z| > 5 happens with probability 6e-7: a false alarm is all but impossible), and from how
#: many the terminal warns that the norm drifts.
PLAUSIBLE_SIGMAS, DRIFT_SIGMAS = 5.0, 3.0


def optimize_checks(r: OptimizeResult) -> list[Finding]:
    """The optimisation's checks: the value moved the intended way and stayed finite; z0 stayed
    finite; z0 stayed a plausible Gaussian draw (the batch's mean norm within
    ``PLAUSIBLE_SIGMAS`` standard deviations of a chi(d) draw's, computed for its dimension and
    batch, whatever the regulariser), with a warning when it drifts past ``DRIFT_SIGMAS``."""
    first, last = r.values[0], r.values[-1]
    moved = (last > first) if r.direction == "up" else (last < first)
    finite_values = all(math.isfinite(v) for v in r.values)
    checks = [
        Finding("objective_moves", bool(moved and finite_values),
                f"{r.objective}: {first:.6g} -> {last:.6g} ({'up' if last > first else 'down'}"
                f", intended {r.direction})"
                + ("" if finite_values else "; the objective became non-finite"),
                value=last, threshold=first),
        Finding("z0_finite", r.z_finite,
                "z0 stayed finite" if r.z_finite else "z0 has NaN/Inf values",
                value=r.z_finite, threshold=True),
    ]
    d = round(r.sqrt_d ** 2)
    if r.batch and d and r.z_norms:
        mu, sd = chi_band(d, r.batch)
        devs = [(n - mu) / sd if sd > 0 and math.isfinite(n) else math.inf for n in r.z_norms]
        k, worst = max(enumerate(devs), key=lambda kv: abs(kv[1]))
        band = (f"a Gaussian draw of dimension {d}, batch {r.batch} keeps it in "
                f"{mu:.4g} +- {PLAUSIBLE_SIGMAS:g} x {sd:.3g}")
        ok = abs(worst) <= PLAUSIBLE_SIGMAS
        checks.append(Finding(
            "z0_plausible", ok,
            (f"mean ||z0|| stayed a plausible Gaussian draw's ({r.z_norms[0]:.4g} -> "
             f"{r.z_norms[-1]:.4g}, at most {abs(worst):.2g} sd from {mu:.4g}; {band})" if ok else
             f"mean ||z0|| {r.z_norms[k]:.4g} at iteration {k} is {abs(worst):.3g} sd from a "
             f"Gaussian draw's ({band}): the samples come from noise the sampler was not made "
             f"for. hint: a smaller --lr, --clip, or --norm-reg chi / renorm"),
            value=abs(worst), threshold=PLAUSIBLE_SIGMAS, step=k))
        if ok and abs(worst) > DRIFT_SIGMAS:
            checks.append(Finding(
                "z0_norm_drift", True, f"mean ||z0|| drifts: {abs(worst):.2g} sd from a "
                f"Gaussian draw's at iteration {k} ({band})", value=abs(worst),
                threshold=DRIFT_SIGMAS, step=k, level="warning"))
    return checks
