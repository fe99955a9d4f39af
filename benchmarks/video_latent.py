"""Video latents at a Cosmos-like size: probes and statistics stay cheap. A [1, 16, 8, 44, 80]
latent (450,560 elements), a small 3D-conv denoiser (gradcheck.sampling.TinyVideoNet), the
RES sampler with per-denoiser-call checkpointing, float32: a plain forward+backward against
gradcheck's record phase (every probe, the statistics, the step graph) on the same sampler and
seed, each in a fresh process (peak RSS minus the RSS before, as benchmarks/memory.py), repeats
interleaved; gradients compared elementwise. Writes results/video_latent.json.

    .venv/bin/python benchmarks/video_latent.py [--steps 6] [--repeats 3] [--width 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPE = (1, 16, 8, 44, 80)


def child(kind: str, steps: int, width: int, out: str) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    import gradcheck
    from gradcheck.sampling import EDMDenoiser, ResSampler, SamplerConfig, TinyVideoNet

    torch.manual_seed(0)
    den = EDMDenoiser(TinyVideoNet(channels=SHAPE[1], width=width)).requires_grad_(False).eval()
    smp = ResSampler(den, SamplerConfig(steps=steps, checkpoint=True), mode="default")
    z0 = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(SHAPE)
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    t0 = time.perf_counter()
    if kind == "plain":
        z = z0.clone().requires_grad_(True)
        loss = torch.nn.functional.mse_loss(smp(z), target)
        (g,) = torch.autograd.grad(loss, [z])
    else:
        rep = gradcheck.diagnose(smp, z0, target=target, numeric=False, optim_steps=0,
                                 locate="never", shadow=False)
        g = rep.handles["z0_grad"]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(g, out)
    print(json.dumps({"peak_mb": peak - before, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.steps, args.width, args.child[1])
        return
    import tempfile

    import torch

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runs: dict[str, list[dict]] = {"plain": [], "gradcheck": []}
    grads = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in ("plain", "gradcheck") if r % 2 == 0 else ("gradcheck", "plain"):
                out = os.path.join(tmp, f"{kind}.pt")
                res = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                      "--width", str(args.width), "--child", kind, out],
                                     capture_output=True, text=True, env=env, check=True)
                runs[kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
                grads[kind] = torch.load(out)
    diff = float((grads["plain"] - grads["gradcheck"]).abs().max())
    scale = float(grads["plain"].abs().max())
    summary = {}
    for kind, rows in runs.items():
        t = [x["seconds"] for x in rows]
        m = [x["peak_mb"] for x in rows]
        summary[kind] = {"seconds": {"min": min(t), "median": statistics.median(t),
                                     "max": max(t)},
                         "peak_mb": {"min": min(m), "median": statistics.median(m),
                                     "max": max(m)}}
    ratio_t = summary["gradcheck"]["seconds"]["median"] / summary["plain"]["seconds"]["median"]
    ratio_m = summary["gradcheck"]["peak_mb"]["median"] / summary["plain"]["peak_mb"]["median"]
    print(f"latent {list(SHAPE)}, {args.steps} steps 2ab, TinyVideoNet width {args.width}, "
          f"checkpointed, float32, {args.repeats} interleaved repeats (fresh processes)")
    for kind in runs:
        s = summary[kind]
        print(f"  {kind:<10} time {s['seconds']['min']:.2f}/{s['seconds']['median']:.2f}/"
              f"{s['seconds']['max']:.2f} s (min/median/max), peak "
              f"{s['peak_mb']['median']:.0f} MB (median)")
    print(f"  ratio (median): time {ratio_t:.3f}x, peak memory {ratio_m:.3f}x; dL/dz0 max abs "
          f"difference {diff:.2e} (of max |g| {scale:.2e})")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_file import write

    print("raw results:", write("video_latent", {
        "shape": list(SHAPE), "steps": args.steps, "width": args.width, "runs": runs,
        "summary": summary, "time_ratio": ratio_t, "memory_ratio": ratio_m,
        "grad_max_abs_diff": diff, "grad_max_abs": scale}))


if __name__ == "__main__":
    main()
