"""The fault catalogue as a table: for every kind of break, injected at every position, in every
solver and both main modes: how many gradcheck detects, locates at the right step and explains with
the right cause; side by side with the check people use today (``z0.grad is None``, as in the
originating note). Then false alarms on healthy variants (solver x mode x steps x dtype, with the
locator forced on).

    .venv/bin/python benchmarks/fault_catalogue.py

Bar: 100% detected, 100% right step, >= 95% right cause, 0 false alarms.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradcheck  # noqa: E402
from gradcheck.sampling import (  # noqa: E402
    NOISE_MODES, SOLVERS, GaussianDenoiser, ResSampler, SamplerConfig,
)
from tests.faults import FAULTS, FaultySampler, cases, run_case  # noqa: E402


def naive_detects(den, fault, pos, solver, mode, z0, target) -> bool:
    """The originating note's check: back-propagate and look at z0.grad."""
    steps = 8 if solver == "2mid" else 4
    smp = FaultySampler(den, fault, pos, solver=solver, steps=steps, mode=mode)
    z = z0.clone().requires_grad_(True)
    with torch.enable_grad():  # a fault that switches grad mode off must not outlive its case
        out = smp(z)
        loss = torch.nn.functional.mse_loss(out, target)
        if loss.requires_grad:
            loss.backward()
    return z.grad is None


def main() -> None:
    warnings.simplefilter("ignore")
    den = GaussianDenoiser(0.1, 0.5)
    g = torch.Generator().manual_seed(11)
    z0 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0])
    t0 = time.perf_counter()
    for fault, pos, solver, mode in cases():
        rep, detected, right_step, right_cause = run_case(den, fault, pos, solver, mode, z0,
                                                          target)
        naive = naive_detects(den, fault, pos, solver, mode, z0, target)
        r = rows[fault.name]
        r[0] += 1
        r[1] += detected
        r[2] += right_step
        r[3] += right_cause
        r[4] += naive
        b = rep.locator.bisection if rep.locator else None
        if b is not None:  # the numeric localisation's cost: forward passes (+1 fwd+bwd)
            r[5] += 1
            r[6] += b.forwards
    elapsed = time.perf_counter() - t0
    head = f"{'fault':<22}{'injected':>9}{'detected':>10}{'right step':>12}{'right cause':>13}" \
           f"{'z0.grad is None':>17}{'bisection fwd/case':>20}"
    print(head)
    print("-" * len(head))
    tot = [0] * 7
    for f in FAULTS:
        r = rows[f.name]
        tot = [a + b for a, b in zip(tot, r)]
        cost = f"{r[6] / r[5]:.1f} (+1 f+b)" if r[5] else "-"
        print(f"{f.name:<22}{r[0]:>9}{r[1]:>10}{r[2]:>12}{r[3]:>13}{r[4]:>17}{cost:>20}")
    print("-" * len(head))
    n = tot[0]
    print(f"{'total':<22}{n:>9}{tot[1]:>10}{tot[2]:>12}{tot[3]:>13}{tot[4]:>17}")
    print(f"{'rate':<22}{'':>9}{tot[1] / n:>10.1%}{tot[2] / n:>12.1%}{tot[3] / n:>13.1%}"
          f"{tot[4] / n:>17.1%}")
    print(f"gradcheck detects {tot[1] / max(1, tot[4]):.1f}x as many breaks as z0.grad is None "
          f"({n} cases, {elapsed:.1f} s, {1000 * elapsed / n:.0f} ms a case incl. the naive check)")

    alarms = total = 0
    for solver in SOLVERS:
        for mode in NOISE_MODES:
            for steps in (1, 2, 4, 35):
                for dtype in (torch.float32, torch.float64):
                    zz = z0.to(dtype)
                    rep = gradcheck.diagnose(ResSampler(den, SamplerConfig(solver=solver, steps=steps),
                                                        mode=mode), zz, locate="always",
                                             optim_steps=1)
                    total += 1
                    alarms += (not rep.passed) or rep.locator.primary is not None
    print(f"false alarms on healthy variants: {alarms} of {total} (locator forced on)")
    results = {"res": {"cases": n, "detected": tot[1], "right_step": tot[2],
                       "right_cause": tot[3], "naive_detected": tot[4],
                       "bisected_cases": tot[5], "bisection_forwards": tot[6],
                       "healthy_variants": total, "false_alarms": alarms, "seconds": elapsed,
                       "per_fault": {f.name: dict(zip(
                           ["cases", "detected", "right_step", "right_cause", "naive_detected",
                            "bisected_cases", "bisection_forwards"], rows[f.name]))
                           for f in FAULTS}}}
    results["vp"] = vp_family()
    from results_file import write

    print(f"raw results: {write('fault_catalogue', results)}")


def vp_family() -> dict:
    """The second family: a VP/DDIM loop around an epsilon-MLP (tests/faults_vp.py)."""
    from tests.faults_vp import NOT_A_BREAK, EpsMLP, VPSampler, run_vp_case, vp_cases

    model = EpsMLP().double()
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    n = det = step = cause = checks = 0
    for fault, pos in vp_cases():
        rep, d, st, ca = run_vp_case(model, fault, pos, z0, target)
        n, det, step, cause = n + 1, det + d, step + st, cause + ca
        checks += rep.locator.vjp_checks if rep.locator else 0
    elapsed = time.perf_counter() - t0
    print(f"\nVP/DDIM loop + epsilon-MLP: {n} breaks ({len(NOT_A_BREAK)} placements excluded as "
          f"no break, see tests/faults_vp.py): detected {det / n:.1%}, right step {step / n:.1%}, "
          f"right cause {cause / n:.1%}; {checks} custom-Function VJP checks in all; "
          f"{elapsed:.1f} s")
    alarms = total = 0
    for dtype in (torch.float64, torch.float32):
        m = EpsMLP().to(dtype)
        for seed in range(16):
            zz = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64).to(dtype)
            rep = gradcheck.diagnose(VPSampler(m, 6), zz, locate="always", optim_steps=1)
            total += 1
            alarms += (not rep.passed) or rep.locator.primary is not None
    print(f"false alarms on the healthy VP loop: {alarms} of {total} (float32 and float64, 16 "
          f"seeds each, locator forced on)")
    return {"cases": n, "detected": det, "right_step": step, "right_cause": cause,
            "vjp_checks": checks, "healthy_runs": total, "false_alarms": alarms,
            "seconds": elapsed}


if __name__ == "__main__":
    main()
