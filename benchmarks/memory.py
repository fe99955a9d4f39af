"""Peak memory and time of a forward+backward through the sampler, full unroll against
per-denoiser-call checkpointing (gradcheck's --checkpoint), against the number of steps.

    .venv/bin/python benchmarks/memory.py [--steps 4 8 16 35] [--width 96] [--size 32]

Each configuration runs in a fresh process with MALLOC_MMAP_THRESHOLD_=65536 (large blocks go back
to the OS on free, so the peak RSS is live memory, not glibc's cached heap); the figure reported is
the peak RSS during forward+backward minus the RSS just before it (the model and z0 loaded).
Bar: with checkpointing, the peak at 35 steps <= 1.3x the peak at 4 steps, at <= 1.5x the time of
full unroll.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(steps: int, ckpt: bool, width: int, size: int, batch: int) -> None:
    import torch

    from gradcheck.sampling import EDMDenoiser, ResSampler, SamplerConfig, TinyUNet

    torch.manual_seed(0)
    den = EDMDenoiser(TinyUNet(width=width), sigma_data=0.75).requires_grad_(False).eval()
    smp = ResSampler(den, SamplerConfig(steps=steps, checkpoint=ckpt), mode="learnable_step_noise")
    z = torch.randn(batch, 1, size, size).requires_grad_(True)
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    t0 = time.perf_counter()
    out = smp(z)
    (g,) = torch.autograd.grad(out.square().mean(), [z])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak - before, "seconds": seconds,
                      "grad_norm": float(g.norm())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 35])
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--child", nargs=2, metavar=("STEPS", "CKPT"))
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1] == "1", args.width, args.size, args.batch)
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = {}
    for steps in args.steps:
        for ckpt in (0, 1):
            out = subprocess.run([sys.executable, __file__, "--child", str(steps), str(ckpt),
                                  "--width", str(args.width), "--size", str(args.size),
                                  "--batch", str(args.batch)], env=env, capture_output=True,
                                 text=True, check=True)
            res[(steps, ckpt)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"denoiser TinyUNet width {args.width}, z0 [{args.batch}, 1, {args.size}, {args.size}], "
          f"learnable_step_noise, RES 2ab; peak = RSS during fwd+bwd minus RSS before")
    print(f"{'steps':>6}{'full MB':>10}{'ckpt MB':>10}{'mem ratio':>11}{'full s':>9}"
          f"{'ckpt s':>9}{'time ratio':>12}{'same grad':>11}")
    for steps in args.steps:
        f, c = res[(steps, 0)], res[(steps, 1)]
        same = abs(f["grad_norm"] - c["grad_norm"]) <= 1e-5 * abs(f["grad_norm"])
        print(f"{steps:>6}{f['peak_mb']:>10.0f}{c['peak_mb']:>10.0f}"
              f"{c['peak_mb'] / f['peak_mb']:>11.2f}{f['seconds']:>9.2f}{c['seconds']:>9.2f}"
              f"{c['seconds'] / f['seconds']:>12.2f}{str(same):>11}")
    lo, hi = min(args.steps), max(args.steps)
    growth = res[(hi, 1)]["peak_mb"] / res[(lo, 1)]["peak_mb"]
    slow = res[(hi, 1)]["seconds"] / res[(hi, 0)]["seconds"]
    print(f"checkpointed peak at {hi} steps / at {lo} steps: {growth:.2f}x (bar 1.3x); "
          f"full unroll: {res[(hi, 0)]['peak_mb'] / res[(lo, 0)]['peak_mb']:.2f}x")
    print(f"checkpointed time / full unroll time at {hi} steps: {slow:.2f}x (bar 1.5x)")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results_file import write

    print(f"wrote {write('memory', {'width': args.width, 'size': args.size, 'batch': args.batch, 'rows': [{'steps': st, 'checkpoint': bool(ck), **res[(st, ck)]} for st in args.steps for ck in (0, 1)], 'ckpt_growth': growth, 'ckpt_slowdown': slow})}")


if __name__ == "__main__":
    main()
