"""Hook or capture: what recording the gradient at 1,000 intermediate values costs a backward pass,
by the values' size. Sets ``gradstats.DEFER_NUMEL`` and ``opdetail.CAPTURE_NUMEL``: up to that size the
record pass captures a value's gradient edge instead of hooking it.

    .venv/bin/python benchmarks/capture_cost.py [--repeats 15]

A chain of 1,000 ops (``h = sin(1.01 h)``) on a float32 vector of n elements, differentiated with
``torch.autograd.grad`` w.r.t. its input, three ways, interleaved, CPU time, 1 thread:

- ``plain``: the input only;
- ``hooked``: a read-only tensor hook on every op's output, registered in the forward (what
  gradcheck did before: the hook holds a small gradient, or reduces it to its norm, as
  ``HeldGrads`` and the op detail's hook do), forward + backward timed;
- ``captured``: every op output's gradient edge an input of the same ``autograd.grad``, the
  gradients summarised after it returns (forward + backward timed).

A captured gradient cannot have its memory reused by the rest of the backward, so capture wins
on small values (no Python call per value) and loses on large ones. Writes
``results/capture_cost.json``; prints min / median / max of each, and the ratios to ``plain``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.autograd.graph import GradientEdge

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_file  # noqa: E402

from gradcheck.gradstats import DEFER_NUMEL  # noqa: E402

OPS = 1000
SIZES = (256, 4096, 16384, 65536)


def _norm(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(g)


def run(size: int, how: str) -> float:
    x = torch.linspace(-1, 1, size).requires_grad_(True)
    t0 = time.process_time()
    h, outs, kept = x, [], []
    for _ in range(OPS):
        h = (h * 1.01).sin()
        if how == "hooked":  # what a probe's hook does: hold a small gradient, else its norm
            h.register_hook(lambda g: kept.append(g if g.numel() <= DEFER_NUMEL else _norm(g)))
        elif how == "captured":
            outs.append(GradientEdge(h.grad_fn, 0))
    grads = torch.autograd.grad(h.sum(), [x, *outs])
    if how == "captured":
        kept = [g if g.numel() <= DEFER_NUMEL else _norm(g) for g in grads[1:]]
    del grads, kept
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, a chain of {OPS} ops, {args.repeats} interleaved "
          f"repeats, CPU time of forward + backward; DEFER_NUMEL = {DEFER_NUMEL}")
    print(f"{'elements':>9}{'plain ms':>10}{'hooked ms':>11}{'captured ms':>13}"
          f"{'hooked/plain':>14}{'captured/plain':>16}")
    rows = []
    for size in SIZES:
        t = {how: [] for how in ("plain", "hooked", "captured")}
        for how in t:  # warm-up
            run(size, how)
        for _ in range(args.repeats):
            for how in t:
                t[how].append(run(size, how))
        med = {how: statistics.median(v) for how, v in t.items()}
        row = {"elements": size,
               **{f"{how}_s": {"min": min(v), "median": statistics.median(v), "max": max(v)}
                  for how, v in t.items()},
               "hooked_ratio": med["hooked"] / med["plain"],
               "captured_ratio": med["captured"] / med["plain"],
               "captured_cheaper": med["captured"] < med["hooked"]}
        rows.append(row)
        print(f"{size:>9}{med['plain'] * 1e3:>10.1f}{med['hooked'] * 1e3:>11.1f}"
              f"{med['captured'] * 1e3:>13.1f}{row['hooked_ratio']:>14.2f}"
              f"{row['captured_ratio']:>16.2f}", flush=True)
    path = results_file.write("capture_cost", {"ops": OPS, "repeats": args.repeats,
                                               "defer_numel": DEFER_NUMEL, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
