"""Sample quality of the built-in trained denoiser, judged by the built-in classifier.

    .venv/bin/python benchmarks/model_quality.py [--n 256] [--steps 35] [--weights DIR]

Draws n samples (RES 2ab, 35 steps, deterministic) and reports the share classified with
confidence >= 0.9 and the digits that appear. Bar: >= 80% confident, all ten digits. Also prints
the same numbers for the untrained (seeded) network as a side-by-side baseline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradcheck.models import load_classifier, load_denoiser  # noqa: E402
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser  # noqa: E402


def quality(den, clf, n: int, steps: int, seed: int = 0) -> tuple[float, list[int]]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        x = ResSampler(den, SamplerConfig(steps=steps))(z0).clamp(-1, 1)
        p = clf(x).softmax(1)
    conf, label = p.max(1)
    confident = (conf >= 0.9).float().mean().item()
    counts = torch.bincount(label[conf >= 0.9], minlength=10).tolist()
    return confident, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    w = Path(args.weights) if args.weights else None
    clf = load_classifier(weights=w)
    for name, den in (("trained", load_denoiser(weights=w)), ("untrained", build_denoiser("conv"))):
        conf, counts = quality(den, clf, args.n, args.steps)
        digits = sum(c > 0 for c in counts)
        print(f"{name:<10} confident (p >= 0.9): {conf:6.1%}   digits present: {digits}/10   "
              f"per digit: {counts}")
        if name == "trained":
            ok = conf >= 0.8 and digits == 10
            print(f"bar (>= 80% confident, all ten digits): {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
