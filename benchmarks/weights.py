"""Gradients only where asked: the record pass of a diffusers UNet whose weights require grad (as a
freshly loaded ``UNet2DModel``'s do), differentiating z0 only (the default) against also the
weights (``grad_weights=True``, what ``loss.backward()`` computes).

    .venv/bin/python benchmarks/weights.py [--steps 10] [--repeats 7]

A UNet2DModel (block_out_channels 32/64, 16x16 samples, random init, float32, 1 thread) through
``adapters.diffusers_loop`` with DDIM; the record phase only (numeric, Adam probe, locator and op
detail off). Interleaved repeats, CPU time, min/median/max; dL/dz0 compared elementwise.
Writes ``results/weights.json``.
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
from gradcheck import adapters  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    n_weights = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    fn = adapters.diffusers_loop(unet, diffusers.DDIMScheduler(num_train_timesteps=1000),
                                 steps=args.steps)
    z0 = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.zeros_like(z0)

    def run(grad_weights: bool):
        t0 = time.process_time()
        rep = gradcheck.diagnose(fn, z0, target=target, numeric=False, optim_steps=0,
                                 locate="never", op_detail="never", grad_weights=grad_weights)
        return time.process_time() - t0, rep

    run(False), run(True)  # warm-up
    times = {False: [], True: []}
    grads = {}
    for _ in range(args.repeats):
        for gw in (False, True):
            t, rep = run(gw)
            times[gw].append(t)
            grads[gw] = rep.handles["z0_grad"]
    same = torch.equal(grads[False], grads[True])
    close = torch.allclose(grads[False], grads[True], rtol=1e-6, atol=0)
    stats = {("z0_only" if not gw else "with_weights"):
             {"min": min(v), "median": statistics.median(v), "max": max(v)}
             for gw, v in times.items()}
    ratio = stats["z0_only"]["median"] / stats["with_weights"]["median"]
    print(f"diffusers UNet2DModel, {n_weights} weights requiring grad, {args.steps} DDIM steps, "
          f"1 thread, {args.repeats} interleaved repeats, CPU time")
    for k, v in stats.items():
        print(f"  {k:<13} min/median/max {v['min']:.3f}/{v['median']:.3f}/{v['max']:.3f} s")
    print(f"  z0 only / with weights (medians): {ratio:.3f}; dL/dz0 identical: {same} "
          f"(within 1e-6: {close})")
    path = results_file.write("weights", {
        "weights": n_weights, "steps": args.steps, "repeats": args.repeats, "times_s": stats,
        "ratio_median": ratio, "z0_grad_identical": same, "z0_grad_close": close})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
