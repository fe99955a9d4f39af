"""What instrumentation costs: a plain forward+backward of the built-in sampler against the same
under a gradcheck trace (every state, denoiser input/output and step noise probed, statistics
materialised once). Side by side in one process, interleaved, median of repeats; prints ratios.

    .venv/bin/python benchmarks/probe_overhead.py [--steps 35] [--batch 4] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradcheck import probe, trace
from gradcheck.sampling import EDMDenoiser, ResSampler, SamplerConfig, TinyUNet, build_denoiser


def plain(smp, z0):
    z = z0.clone().requires_grad_(True)
    out = smp(z)
    (g,) = torch.autograd.grad(out.square().mean(), [z])
    return g


def traced(smp, z0):
    z = z0.clone().requires_grad_(True)
    with trace() as tr:
        probe(z, "z0", kind="z0")
        out = smp(z)
        (g,) = torch.autograd.grad(out.square().mean(), [z])
    assert all(p.reached for p in tr.stats)
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    wide = EDMDenoiser(TinyUNet(width=96)).requires_grad_(False)
    cases = [("built-in conv, 8x8", build_denoiser("conv"), (1, 8, 8)),
             ("width-96 UNet, 32x32", wide, (1, 32, 32))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.steps} steps, median of {args.repeats}")
    print(f"{'denoiser':<22}{'mode':<22}{'plain fwd+bwd':>15}{'traced':>12}{'ratio':>8}{'probes':>8}")
    for (label, den, shape), mode in [(c, m) for c in cases
                                      for m in ("default", "learnable_step_noise")]:
        z0 = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
        smp = ResSampler(den, SamplerConfig(steps=args.steps), mode=mode)
        torch.testing.assert_close(plain(smp, z0), traced(smp, z0))  # same gradient, and warm-up
        tp, tt = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter(); plain(smp, z0); tp.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); traced(smp, z0); tt.append(time.perf_counter() - t0)
        with trace() as tr:
            smp(z0.clone().requires_grad_(True))
        mp, mt = statistics.median(tp), statistics.median(tt)
        print(f"{label:<22}{mode:<22}{mp * 1e3:>12.1f} ms{mt * 1e3:>9.1f} ms{mt / mp:>8.3f}{len(tr.stats):>8}")


if __name__ == "__main__":
    main()
