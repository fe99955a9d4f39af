"""What a complete verdict costs, per ``--checks`` level, against a plain forward+backward.

    .venv/bin/python benchmarks/verdict_cost.py [--steps 35] [--repeats 5]

The built-in RES sampler (trained ``digits`` denoiser, float64, batch 2, 1 thread), both modes. In
one process, after one warm-up of each: interleaved repeats of a plain forward+backward (the
same sampler, z0 and loss, ``torch.autograd.grad`` w.r.t. z0 only) and of ``diagnose`` at each
level (op detail off, as ``overhead.py``; the locator does not run on a healthy sampler). For each
level: the diagnosis's wall time over the plain pass's (min / median / max of the per-repeat
ratios), and its own ``report.cost.total_units`` (stages in units of its recorded pass), beside
the floor of the passes it made: the plain pass plus a no-grad forward (timed in the same
repeat) for each further forward and the rest of a plain pass for each further backward. A
level cannot cost less than its floor; on a model whose backward w.r.t. the input costs about
a forward (the tiny built-in, weights frozen) each further forward is about half a unit.
Bars (issue 15): default <= 2.5x, quick <= 1.3x. Writes ``results/verdict_cost.json``.

``--denoiser cosmos``: the Cosmos-shaped scale case instead (benchmarks/cosmos_denoiser.py, 10.7M
parameters, a [1, 16, 8, 44, 80] latent, float32, every denoiser call checkpointed: ``--checkpoint``
is implied), mode default, levels quick and default (``full`` costs about seven passes of half a
minute each here: ``--levels`` adds it). Writes ``results/verdict_cost_cosmos.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_file  # noqa: E402

import gradcheck  # noqa: E402
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser  # noqa: E402

LEVELS = ("quick", "default", "full")
BARS = {"quick": 1.3, "default": 2.5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--denoiser", choices=("digits", "big", "cosmos"), default="digits",
                    help="digits: the built-in (ops of microseconds, a forward is half of a "
                    "forward+backward); big: a TinyUNet of width 112 (10x the parameters); "
                    "cosmos: the scale benchmark's video denoiser at the Cosmos shape")
    ap.add_argument("--levels", default=None, help="comma-separated --checks levels (default: "
                    "all three; quick,default for cosmos)")
    ap.add_argument("--checkpoint", action="store_true", help="per-denoiser-call checkpointing, "
                    "as big models run (the plain pass then recomputes each call's forward)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    levels = tuple(args.levels.split(",")) if args.levels else (
        ("quick", "default") if args.denoiser == "cosmos" else LEVELS)
    if not set(levels) <= set(LEVELS):
        ap.error(f"--levels: unknown level(s) {', '.join(sorted(set(levels) - set(LEVELS)))}; "
                 f"choose from {', '.join(LEVELS)}")
    modes = ("default", "learnable_step_noise")
    if args.denoiser == "cosmos":
        from cosmos_denoiser import factory

        den = factory()
        z0 = torch.randn(1, *den.sample_shape, generator=torch.Generator().manual_seed(0))
        args.checkpoint, modes = True, ("default",)
    elif args.denoiser == "big":
        from gradcheck.sampling import EDMDenoiser, TinyUNet

        torch.manual_seed(0)
        den = EDMDenoiser(TinyUNet(width=112), sigma_data=0.75).requires_grad_(False).eval()
        den = den.double()
    else:
        den = build_denoiser("digits").double()
    if args.denoiser != "cosmos":
        z0 = torch.randn(2, 1, 8, 8, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    rows = []
    print(f"denoiser {args.denoiser}{' checkpointed' if args.checkpoint else ''}, torch {torch.__version__}, 1 thread, {args.steps} steps, "
          f"{args.repeats} interleaved "
          f"repeats; ratio = diagnose wall time / plain forward+backward wall time")
    for mode in modes:
        smp = ResSampler(den, SamplerConfig(steps=args.steps, checkpoint=args.checkpoint),
                         mode=mode)

        def plain():
            z = z0.clone().requires_grad_(True)
            out = smp(z)
            loss = out.square().mean()
            torch.autograd.grad(loss, [z])

        def diag(level):
            return gradcheck.diagnose(smp, z0, checks=level, op_detail="never")

        def forward():  # what each further sampler pass of a diagnosis costs at least
            with torch.no_grad():
                smp(z0)

        plain()
        forward()
        for level in levels:
            diag(level)
        ratios = {lv: [] for lv in levels}
        units = {lv: [] for lv in levels}
        floors = {lv: [] for lv in levels}
        fwd_share = []
        passes = {}
        for _ in range(args.repeats):
            for level in levels:
                t0 = time.perf_counter()
                forward()
                tf = time.perf_counter() - t0
                t0 = time.perf_counter()
                plain()
                tp = time.perf_counter() - t0
                fwd_share.append(tf / tp)
                t0 = time.perf_counter()
                rep = diag(level)
                td = time.perf_counter() - t0 - rep.timings.get("setup_s", 0.0)
                assert rep.passed, [f.message for f in rep.failed]
                ratios[level].append(td / tp)
                units[level].append(rep.cost.total_units)
                passes[level] = {s.stage: [s.forwards, s.backwards] for s in rep.cost.stages}
                # the floor: the plain pass plus each further forward at a no-grad forward's
                # price and each further backward at the rest of a forward+backward's
                more_f = rep.cost.forwards - 1
                more_b = sum(s.backwards for s in rep.cost.stages) - 1
                floors[level].append(1 + more_f * tf / tp + more_b * (1 - tf / tp))
        share = statistics.median(fwd_share)
        print(f"{mode}: a no-grad forward costs {share:.2f} of a plain forward+backward "
              f"(median), so each further forward pass adds at least that")
        for level in levels:
            r, u, fl = ratios[level], units[level], floors[level]
            row = {"mode": mode, "checks": level,
                   "ratio": {"min": min(r), "median": statistics.median(r), "max": max(r)},
                   "units": {"min": min(u), "median": statistics.median(u), "max": max(u)},
                   "floor": statistics.median(fl), "forward_share": share,
                   "passes": passes[level], "bar": BARS.get(level)}
            rows.append(row)
            bar = BARS.get(level)
            verdict = "" if bar is None else (" ok" if row["ratio"]["median"] <= bar else " OVER")
            print(f"{mode:<22}{level:<9} x plain f+b min/median/max "
                  f"{min(r):.2f}/{statistics.median(r):.2f}/{max(r):.2f}"
                  + (f" (bar {bar:g}{verdict})" if bar else "")
                  + f"; floor of its passes {row['floor']:.2f}"
                  + f"; own units median {statistics.median(u):.2f}; passes {passes[level]}",
                  flush=True)
    name = "verdict_cost" + {"digits": "", "big": "_big", "cosmos": "_cosmos"}[args.denoiser] + (
        "_checkpoint" if args.checkpoint and args.denoiser != "cosmos" else "")
    n_params = sum(p.numel() for p in den.parameters())
    path = results_file.write(name, {"steps": args.steps, "repeats": args.repeats,
                                     "denoiser": args.denoiser, "parameters": n_params,
                                     "checkpoint": args.checkpoint,
                                     "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
