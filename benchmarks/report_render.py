"""The full HTML report of a long run vs torchviz's single raw graph of the same run.

    .venv/bin/python benchmarks/report_render.py [--steps 35 200] [--repeats 3] [--timeout 120]

For each step count: one diagnosis of the built-in sampler (``digits`` denoiser, mode
learnable_step_noise, op detail recorded: every op's |g| and source line), then, interleaved
``--repeats`` times: gradcheck's whole report rendered from the record (the overview heat map, the
step chain, the op-level graph of *every* step with its layout, the Graphviz step graph as SVG and
PNG, the per-step plot, index.html) and torchviz's ``make_dot`` of the same loss laid out by the
same Graphviz (one drawing of the raw graph; it gets ``--timeout`` seconds).

Bars (issue 14): 35 steps render <= 5 s, page <= 3 MB; 200 steps <= 30 s, <= 15 MB.
Prints min / median / max and ratios; writes ``results/report_render.json``.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_file  # noqa: E402

import gradcheck  # noqa: E402
from gradcheck.report.dot import LayoutFailed, layout  # noqa: E402
from gradcheck.report.render import render  # noqa: E402
from gradcheck.report.write import as_record  # noqa: E402
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser  # noqa: E402

BARS = {35: (5.0, 3.0), 200: (30.0, 15.0)}  # seconds, MB


def _torchviz(smp, z0, timeout: float) -> float | None:
    try:
        from torchviz import make_dot  # the tool people reach for today (a peer, not ours)
    except ImportError:
        return None
    z = z0.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(smp(z), torch.zeros_like(z0))
    t0 = time.perf_counter()
    try:
        layout(make_dot(loss).source, ("svg",), timeout=timeout)
    except (LayoutFailed, RecursionError):
        return float("inf")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[35, 200])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    den = build_denoiser("digits").double()
    z0 = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = []
    print(f"torch {torch.__version__}, 1 thread; torchviz timeout {args.timeout:g} s")
    for steps in args.steps:
        smp = ResSampler(den, SamplerConfig(steps=steps), mode="learnable_step_noise")
        rep = gradcheck.diagnose(smp, z0, numeric=False, optim_steps=0, op_detail="always")
        record = as_record(rep, label=f"RES 2ab, {steps} steps")
        ops = sum(len(r.ops) for r in rep.graph.regions)
        t_render, t_viz, size = [], [], 0
        for _ in range(args.repeats):
            out = Path(tempfile.mkdtemp(prefix="gc-bench-"))
            t0 = time.perf_counter()
            render(record, out, graphs="auto")
            t_render.append(time.perf_counter() - t0)
            size = (out / "index.html").stat().st_size
            shutil.rmtree(out)
            t = _torchviz(smp, z0, args.timeout)
            if t is not None:
                t_viz.append(t)
        med = statistics.median(t_render)
        bar_s, bar_mb = BARS.get(steps, (None, None))
        viz = statistics.median(t_viz) if t_viz else None
        row = {"steps": steps, "autograd_nodes": rep.graph.total_nodes, "ops_in_views": ops,
               "steps_with_op_view": len(rep.graph.regions),
               "render_s": {"min": min(t_render), "median": med, "max": max(t_render)},
               "page_mb": size / 2**20, "bar_render_s": bar_s, "bar_page_mb": bar_mb,
               "torchviz_s": viz if viz is None or viz != float("inf") else None,
               "torchviz_timed_out": viz == float("inf"), "torchviz_timeout_s": args.timeout}
        rows.append(row)
        vs = ("not installed" if viz is None else f"> {args.timeout:g} s (timed out)"
              if viz == float("inf") else f"{viz:.2f} s ({viz / med:.1f}x ours)")
        print(f"{steps:>4} steps, {rep.graph.total_nodes} autograd nodes, {ops} ops drawn: "
              f"render min/median/max {min(t_render):.2f}/{med:.2f}/{max(t_render):.2f} s"
              + (f" ({med / bar_s:.2f} of the {bar_s:g} s bar)" if bar_s else "")
              + f"; page {size / 2**20:.2f} MB"
              + (f" ({size / 2**20 / bar_mb:.2f} of the {bar_mb:g} MB bar)" if bar_mb else "")
              + f"; torchviz, one raw graph: {vs}", flush=True)
    path = results_file.write("report_render", {"rows": rows, "repeats": args.repeats})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
