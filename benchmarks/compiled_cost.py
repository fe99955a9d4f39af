"""A compiled sampler's diagnosis against its eager twin's (issue 27/29: at most 2x).

The same small Euler sampler (a seeded MLP denoiser whose forward does ``float(sigma)``), eager
and ``torch.compile``'d whole (``aot_eager`` and ``inductor``), each warmed up by the user's own
forward+backward first (compilation is the user's cost, not the diagnosis's). Interleaved
repeats, one torch thread; the median wall time of ``gradcheck.diagnose`` per variant and its
ratio to the eager twin's. The compiled variants pay one forward+backward more (the compiled
run that ``compiled_matches_eager`` compares).

    python benchmarks/compiled_cost.py [--repeats 7] [--backends aot_eager inductor]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gradcheck  # noqa: E402
from tests.idioms._loop import euler_loop  # noqa: E402 - the idiom matrix's Euler loop

SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.5, 0.0]


def sampler(backend: str | None, dtype: torch.dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 8)).to(dtype)
    sample = euler_loop(lambda x, s: net(x) + x / (1.0 + float(s)), sigmas=SIGMAS)
    return torch.compile(sample, backend=backend) if backend else sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backends", nargs="+", default=["aot_eager", "inductor"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dtype in (torch.float64, torch.float32):
        z0 = torch.randn(16, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
        variants = {"eager": sampler(None, dtype)}
        variants.update({b: sampler(b, dtype) for b in a.backends})
        for fn in variants.values():  # the user's own warm-up, and gradcheck's first use
            z = z0.clone().requires_grad_(True)
            fn(z).square().mean().backward()
            gradcheck.diagnose(fn, z0)
        times = {k: [] for k in variants}
        for _ in range(a.repeats):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                rep = gradcheck.diagnose(fn, z0)
                times[k].append(time.perf_counter() - t0)
                assert rep.passed, (k, [f.message for f in rep.failed])
        eager = statistics.median(times["eager"])
        for k, ts in times.items():
            med = statistics.median(ts)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "variant": k,
                         "median_s": med, "min_s": min(ts), "max_s": max(ts),
                         "ratio": med / eager})
            print(f"{rows[-1]['dtype']:8s} {k:10s} median {med * 1e3:7.1f} ms  "
                  f"x{med / eager:.2f} of the eager twin's diagnosis", flush=True)
    from results_file import write
    print(write("compiled_cost", {"repeats": a.repeats, "rows": rows}))


if __name__ == "__main__":
    main()
