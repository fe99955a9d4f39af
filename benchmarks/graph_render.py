"""Step graph vs torchviz's raw graph on the same run: time to build the DOT and lay it out.

    .venv/bin/python benchmarks/graph_render.py [--steps 35 200] [--timeout 120]

For each step count, one diagnosis of the built-in sampler (conv denoiser, learnable_step_noise);
then, side by side: gradcheck's step graph (from the record: DOT + one Graphviz layout to SVG) and
torchviz's make_dot of the same loss + the same layout. torchviz gets a timeout and is reported
as "> T s" when it does not finish. Targets: step graph < 2 s at 35 steps, < 5 s at 200.
"""
from __future__ import annotations

import argparse
import time

import torch

import gradcheck
from gradcheck.report.dot import LayoutFailed, layout, step_graph_dot
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[35, 200])
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    den = build_denoiser("conv")
    z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; torchviz timeout "
          f"{args.timeout:g} s")
    print(f"{'steps':>6}{'autograd nodes':>16}{'step graph':>12}{'torchviz':>12}{'ratio':>10}")
    rows = []
    for steps in args.steps:
        smp = ResSampler(den, SamplerConfig(steps=steps), mode="learnable_step_noise")
        rep = gradcheck.diagnose(smp, z0, numeric=False, optim_steps=0, raw_graph_cap=0)

        t0 = time.perf_counter()
        layout(step_graph_dot(rep), ("svg",), timeout=args.timeout)
        t_step = time.perf_counter() - t0

        try:
            from torchviz import make_dot  # the tool people reach for today (a peer, not ours)
        except ImportError:
            print(f"{steps:>6}{rep.graph.total_nodes:>16}{t_step:>10.2f} s"
                  f"{'(pip install torchviz to compare)':>40}", flush=True)
            continue

        z = z0.clone().requires_grad_(True)
        loss = torch.nn.functional.mse_loss(smp(z), torch.zeros_like(z0))
        t0 = time.perf_counter()
        try:
            src = make_dot(loss).source
            layout(src, ("svg",), timeout=max(1.0, args.timeout - (time.perf_counter() - t0)))
            t_viz = time.perf_counter() - t0
            viz, ratio = f"{t_viz:.2f} s", f"{t_viz / t_step:.0f}x"
        except (LayoutFailed, RecursionError) as exc:
            what = "recursion error" if isinstance(exc, RecursionError) else f"> {args.timeout:g} s"
            viz, ratio = what, (f"> {args.timeout / t_step:.0f}x" if "> " in what else "n/a")
        print(f"{steps:>6}{rep.graph.total_nodes:>16}{t_step:>10.2f} s{viz:>12}{ratio:>10}",
              flush=True)
        rows.append({"steps": steps, "autograd_nodes": rep.graph.total_nodes,
                     "step_graph_s": t_step, "torchviz": viz})
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_file import write

    print(f"wrote {write('graph_render', {'timeout_s': args.timeout, 'rows': rows})}")


if __name__ == "__main__":
    main()
