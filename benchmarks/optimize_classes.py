"""Noise optimisation towards every digit: for each K in 0..9, 16 seeds (one batch), at most 50
Adam iterations (lr 0.1, 20 steps of RES 2ab, the built-in trained denoiser); the share of
optimised samples the classifier assigns to K, beside the share before optimising.

    .venv/bin/python benchmarks/optimize_classes.py [--iters 50] [--seeds 16]

Bar: >= 90% classified as K after optimisation, for every K.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradcheck.models import load_classifier, load_denoiser  # noqa: E402
from gradcheck.optimize import parse_objective, run_optimize  # noqa: E402
from gradcheck.sampling import ResSampler, SamplerConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()
    den, clf = load_denoiser(), load_classifier()
    smp = ResSampler(den, SamplerConfig(steps=args.steps))
    z0 = torch.randn(args.seeds, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    print(f"{'K':>2}{'before':>9}{'after':>8}{'gain':>8}{'iters':>7}{'time':>8}")
    worst = 1.0
    for k in range(10):
        obj, start = parse_objective(f"class:{k}", sampler=smp, z0=z0, classifier=clf)
        with torch.no_grad():
            before = (clf(smp(start).clamp(-1, 1)).argmax(1) == k).float().mean().item()
        t0 = time.perf_counter()
        _, z = run_optimize(smp, start, obj, iters=args.iters, lr=args.lr)
        with torch.no_grad():
            after = (clf(smp(z).clamp(-1, 1)).argmax(1) == k).float().mean().item()
        worst = min(worst, after)
        gain = f"{after / before:.1f}x" if before > 0 else "inf"
        print(f"{k:>2}{before:>9.0%}{after:>8.0%}{gain:>8}{args.iters:>7}"
              f"{time.perf_counter() - t0:>7.1f}s", flush=True)
    print(f"worst class: {worst:.0%}; bar (>= 90% for every K): {'PASS' if worst >= 0.9 else 'FAIL'}")


if __name__ == "__main__":
    main()
