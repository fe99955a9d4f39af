"""Is the numeric check's stated power true? Monte Carlo over a family of float32 samplers with
a gradient made wrong by a known relative amount.

Each trial draws z0 and a direction seed, computes the true dL/dz0 by plain autograd, injects an
error e with |e| / |g| = the target, and runs the very judge a diagnosis runs
(:func:`gradcheck.numeric.directional_check`, 7 directions in float32). The error families:

- ``scale``: the whole gradient scaled (e along g: the consistent offset a hook or a wrong
  constant gives);
- ``orth``: e orthogonal to g (the worst orientation for a single direction);
- ``random``: e of random orientation;
- ``one_call``: the gradient through one denoiser call scaled (a hook on one call), rescaled to
  the target.

Counted per cell: failures on all trials, and on the trials whose report states a power
("a gradient X% off is caught with 99% probability") with X at most the target: there the
catch rate must be at least 99%. The healthy cell counts false alarms (must be 0).

    python benchmarks/numeric_power.py [--trials 300] [--rows 4 128]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradcheck.numeric import directional_check  # noqa: E402

SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.0]
FAMILIES = ("scale", "orth", "random", "one_call")
TARGETS = (0.02, 0.03, 0.05)


def sampler(hidden: int = 32) -> Callable[..., torch.Tensor]:
    """``(z0, hook=None) -> output``: an Euler loop over a small seeded float32 network."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.Tanh(),
                              torch.nn.Linear(hidden, 8))

    def sample(z0: torch.Tensor, hook: Callable | None = None) -> torch.Tensor:
        x = z0 * SIGMAS[0]
        for i in range(len(SIGMAS) - 1):
            d = net(x) + x / (1 + SIGMAS[i])
            d = hook(i, d) if hook else d
            x = x + (SIGMAS[i + 1] - SIGMAS[i]) * (x - d) / SIGMAS[i]
        return x
    return sample


def loss(out: torch.Tensor) -> torch.Tensor:
    return out.square().mean()


def wrong_gradient(sample: Callable, z0: torch.Tensor, family: str, target: float,
                   gen: torch.Generator) -> torch.Tensor:
    """The true dL/dz0 (plain autograd) with an error of relative size ``target``."""
    z = z0.clone().requires_grad_(True)
    g = torch.autograd.grad(loss(sample(z)), z)[0]
    if family == "healthy":
        return g
    if family == "scale":
        return g * (1 + target)
    if family in ("orth", "random"):
        u = torch.randn(z0.shape, generator=gen)
        if family == "orth":
            u = u - (u * g).sum() / (g * g).sum() * g
    else:  # one_call: the part of dL/dz0 that flows through one call, doubled, then rescaled
        at = int(torch.randint(0, len(SIGMAS) - 1, (1,), generator=gen))

        def hook(i: int, d: torch.Tensor) -> torch.Tensor:
            if i == at:
                d.register_hook(lambda gd: gd * 2.0)
            return d
        z = z0.clone().requires_grad_(True)
        u = torch.autograd.grad(loss(sample(z, hook)), z)[0] - g
    return g + u / u.norm() * target * g.norm()


def cell(sample: Callable, family: str, target: float, trials: int, rows: int) -> dict:
    failed = claimed = caught = 0
    stated = []
    for t in range(trials):
        gen = torch.Generator().manual_seed(1000 + t)
        z0 = torch.randn(rows, 8, generator=gen)
        grad = wrong_gradient(sample, z0, family, target, gen)

        def loss_at(z: torch.Tensor) -> float:
            with torch.no_grad():
                return float(loss(sample(z)))
        r = directional_check(loss_at, z0, grad, seed=t)
        fail = r.verdict == "disagrees"
        failed += fail
        stated.append(r.detectable if r.detectable is not None else math.inf)
        if r.detectable is not None and r.detectable <= target:
            claimed += 1
            caught += fail
    stated.sort()
    return {"family": family, "target": target, "percent": round(target * 100), "rows": rows,
            "trials": trials,
            "failed": failed, "claimed": claimed, "caught_of_claimed": caught,
            "stated_median": stated[len(stated) // 2]}


def run(trials: int, rows_list: list[int]) -> list[dict]:
    sample = sampler()
    cells = []
    for rows in rows_list:
        for family, target in [("healthy", 0.0)] + [(f, t) for f in FAMILIES for t in TARGETS]:
            t0 = time.perf_counter()
            c = cell(sample, family, target, trials, rows)
            c["seconds"] = round(time.perf_counter() - t0, 2)
            cells.append(c)
            rate = c["caught_of_claimed"] / c["claimed"] if c["claimed"] else math.nan
            print(f"z0 [{rows}, 8] {family:9s} {target:4.0%}: failed {c['failed']:4d}/{trials}"
                  f"  claimed {c['claimed']:4d}, caught {rate:7.2%} of those; stated power "
                  f"(median) {c['stated_median']:.2%}", flush=True)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--rows", type=int, nargs="+", default=[4, 128])
    a = ap.parse_args()
    torch.set_num_threads(1)
    cells = run(a.trials, a.rows)
    from results_file import write
    print(write("numeric_power", {"trials": a.trials, "cells": cells}))


if __name__ == "__main__":
    main()
