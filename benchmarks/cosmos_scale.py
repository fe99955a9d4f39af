"""A Cosmos-shaped run on CPU, through the command line users run: ``gradcheck run --checkpoint``.

    .venv/bin/python benchmarks/cosmos_scale.py [--steps 35] [--checks default] [--threads 2]

A 5D latent [1, 16, 8, 44, 80], 35 steps of RES 2ab, a denoiser of 11.2M parameters
(``benchmarks/cosmos_denoiser.py``), per-denoiser-call checkpointing, float32. Each in a fresh
process, one after the other:

- ``plain``: the same sampler (``ResSampler(..., checkpoint=True)``), z0 and loss (MSE to the
  baseline output from gradcheck's independent noise, as ``gradcheck run`` differentiates), one
  forward+backward with ``torch.autograd.grad``; dL/dz0 saved;
- ``gradcheck``: ``gradcheck run --denoiser benchmarks.cosmos_denoiser:factory --checkpoint
  --z0 z0.pt --save-grad g.pt`` (the whole verdict: report, cost, HTML);
- ``idle``: the same imports, no work (what a process costs before any tensor).

Peak RSS of each process (``ru_maxrss``); the verdict's cost from its report.json; dL/dz0 of the two
compared elementwise. Bars (issue 15): peak memory <= 1.3x the plain checkpointed run. Writes
``results/cosmos_scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (1, 16, 8, 44, 80)
SPEC = "benchmarks.cosmos_denoiser:factory"


def _plain(z0_path: str, out: str, steps: int, seed: int, checks: str) -> None:
    import torch

    from gradcheck.diagnosis import seeded
    from gradcheck.policy import Local
    from gradcheck.sampling import ResSampler, SamplerConfig

    sys.path.insert(0, str(ROOT))
    from benchmarks.cosmos_denoiser import factory

    smp = ResSampler(factory(), SamplerConfig(steps=steps, solver="2ab", checkpoint=True),
                     mode="default", seed=seed)
    z0 = torch.load(z0_path)
    t0 = time.perf_counter()
    if checks == "quick":  # quick's loss: MSE to the seeded noise gradcheck draws for it
        g = torch.Generator().manual_seed(seed + 104729)
        baseline = torch.randn(z0.shape, generator=g, dtype=torch.float64).to(z0.dtype)
    else:
        with torch.no_grad(), seeded(seed, z0.device):  # the baseline gradcheck compares with
            baseline = smp(Local().baseline_noise(z0, seed)).detach()
    t_base = time.perf_counter() - t0
    z = z0.clone().requires_grad_(True)
    t0 = time.perf_counter()
    with seeded(seed, z0.device):
        out_ = smp(z)
    loss = torch.nn.functional.mse_loss(out_, baseline)
    (g,) = torch.autograd.grad(loss, [z])
    t_fb = time.perf_counter() - t0
    torch.save(g, out)
    print(json.dumps({"baseline_s": t_base, "forward_backward_s": t_fb}))


def _measured(cmd: list[str], env: dict[str, str]) -> tuple[dict, float, float, str]:
    """Run ``cmd`` in a child; (its last JSON line or {}, peak RSS MB, seconds, stdout)."""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], "
               "capture_output=True, text=True); sys.stdout.write(r.stdout); "
               "sys.stderr.write(r.stderr); print(json.dumps({'maxrss_kb': resource.getrusage("
               "resource.RUSAGE_CHILDREN).ru_maxrss, 'rc': r.returncode}))")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    lines = res.stdout.strip().splitlines()
    meta = json.loads(lines[-1])
    if meta["rc"] not in (0, 2):
        raise SystemExit(f"{cmd[:4]} failed ({meta['rc']}):\n{res.stdout[-3000:]}\n"
                         f"{res.stderr[-3000:]}")
    data = {}
    for line in reversed(lines[:-1]):
        if line.startswith("{"):
            data = json.loads(line)
            break
    return data, meta["maxrss_kb"] / 1024, seconds, "\n".join(lines[:-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--checks", default="default", choices=("quick", "default", "full"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain", nargs=2, metavar=("Z0", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        import torch

        torch.set_num_threads(args.threads)
        return _plain(*args.plain, steps=args.steps, seed=args.seed, checks=args.checks)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import results_file

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp = Path(tempfile.mkdtemp(prefix="gc-cosmos-"))
    z0 = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    torch.save(z0, tmp / "z0.pt")
    idle, idle_mb, _, _ = _measured([sys.executable, "-c", "import torch, gradcheck, "
                                     "gradcheck.cli, matplotlib, jinja2; print('{}')"], env)
    plain, plain_mb, plain_wall, _ = _measured(
        [sys.executable, __file__, "--plain", str(tmp / "z0.pt"), str(tmp / "g_plain.pt"),
         "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed),
         "--checks", args.checks],
        env)
    print(f"plain checkpointed: {plain}, peak {plain_mb:.0f} MB, {plain_wall:.0f} s", flush=True)
    _, gc_mb, gc_wall, text = _measured(
        [sys.executable, "-m", "gradcheck", "run", "--denoiser", SPEC, "--shape", "16,8,44,80",
         "--batch", "1", "--z0", str(tmp / "z0.pt"), "--steps", str(args.steps), "--solver",
         "2ab", "--checkpoint", "--mode", "default", "--dtype", "float32", "--seed",
         str(args.seed), "--threads", str(args.threads), "--checks", args.checks,
         "--save-grad", str(tmp / "g_gc.pt"), "--out", str(tmp / "report")], env)
    print(text[-2500:], flush=True)
    rep = json.loads((tmp / "report" / "report.json").read_text())["modes"]["default"]
    g_plain = torch.load(tmp / "g_plain.pt")
    g_gc = torch.load(tmp / "g_gc.pt")["default"]
    diff = (g_gc - g_plain).abs()
    rel = float(diff.max() / g_plain.abs().max())
    cost = rep["cost"]
    fb = plain["forward_backward_s"]
    row = {
        "shape": list(SHAPE), "steps": args.steps, "checks": args.checks,
        "threads": args.threads, "passed": all(c["passed"] for c in rep["checks"]
                                               if c["level"] == "error"),
        "idle_peak_mb": idle_mb, "plain_peak_mb": plain_mb, "gradcheck_peak_mb": gc_mb,
        "memory_ratio": gc_mb / plain_mb,
        "memory_ratio_net_of_idle": (gc_mb - idle_mb) / max(1e-9, plain_mb - idle_mb),
        "plain_forward_backward_s": fb, "plain_baseline_s": plain["baseline_s"],
        "gradcheck_wall_s": gc_wall, "verdict_units_own": cost["total_units"],
        "verdict_over_plain_fb": sum(s["seconds"] for s in cost["stages"]) / fb,
        "stages": cost["stages"],
        "grad_max_abs_diff": float(diff.max()), "grad_max_rel_to_max": rel,
        "grad_identical": bool(torch.equal(g_gc, g_plain)),
    }
    print(f"peak RSS: idle {idle_mb:.0f} MB, plain {plain_mb:.0f} MB, gradcheck run "
          f"{gc_mb:.0f} MB: {row['memory_ratio']:.3f}x (net of the idle process "
          f"{row['memory_ratio_net_of_idle']:.3f}x; bar 1.3)")
    print(f"verdict ({args.checks}): {row['verdict_over_plain_fb']:.2f}x the plain checkpointed "
          f"forward+backward ({fb:.0f} s); own units {cost['total_units']:.2f}; dL/dz0 max |diff| "
          f"{row['grad_max_abs_diff']:.3g} ({rel:.2g} of max |g|), identical: "
          f"{row['grad_identical']}")
    path = results_file.write("cosmos_scale" + ("" if args.checks == "default"
                                                else f"_{args.checks}"), row)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
