"""No false alarm on stock diffusers, over many seeds: every stock scheduler through
``adapters.diffusers_loop`` and the stock ``DDIMPipeline`` (clip_sample and the image clamp), float32,
a small random UNet2DModel. Deterministic schedulers must pass; stochastic ones pass and report
their fresh noise; PNDM's exact-zero last call is a warning. Prints a table, writes
``results/healthy_stock.json``.

    .venv/bin/python benchmarks/healthy_stock.py [--seeds 8] [--pipeline-seeds 16]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradcheck  # noqa: E402
from gradcheck import adapters  # noqa: E402

from tests.test_diffusers import SCHEDULERS, STOCHASTIC, tiny_unet  # noqa: E402 - the suite's


def main() -> None:
    import diffusers

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--pipeline-seeds", type=int, default=16)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    net = tiny_unet()
    results: dict = {"schedulers": {}, "pipeline": {}}
    t0 = time.perf_counter()
    print(f"{'scheduler':<34}{'runs':>5}{'pass':>6}{'alarms':>8}  verdicts")
    for name in SCHEDULERS:
        verdicts: Counter = Counter()
        passed = alarms = 0
        for seed in range(args.seeds):
            fn = adapters.diffusers_loop(net, getattr(diffusers, name)(num_train_timesteps=1000),
                                         steps=5)
            z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1000 + seed))
            rep = gradcheck.diagnose(fn, z0, optim_steps=1)
            passed += rep.passed
            want = "warning" if name in STOCHASTIC else "info"
            alarms += (not rep.passed) or rep.check("fresh_randomness").level != want
            verdicts[rep.numeric.verdict] += 1
        results["schedulers"][name] = {"runs": args.seeds, "passed": passed, "alarms": alarms,
                                       "verdicts": dict(verdicts)}
        print(f"{name:<34}{args.seeds:>5}{passed:>6}{alarms:>8}  {dict(verdicts)}")
    verdicts = Counter()
    passed = 0
    for seed in range(args.pipeline_seeds):
        pipe = diffusers.DDIMPipeline(unet=net, scheduler=diffusers.DDIMScheduler(
            num_train_timesteps=1000, clip_sample=True))
        z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        rep = gradcheck.diagnose(adapters.diffusers_pipeline(pipe, unwrap=True,
                                                             num_inference_steps=4),
                                 z0, optim_steps=0)
        passed += rep.passed
        verdicts[rep.numeric.verdict] += 1
    results["pipeline"] = {"runs": args.pipeline_seeds, "passed": passed,
                           "verdicts": dict(verdicts),
                           "directions": rep.numeric.directions,
                           "detectable": rep.numeric.detectable}
    results["seconds"] = time.perf_counter() - t0
    print(f"DDIMPipeline (clip_sample, float32, 4 steps): {passed} of {args.pipeline_seeds} seeds "
          f"pass; numeric verdicts {dict(verdicts)}; {rep.numeric.directions} directions "
          f"({rep.numeric.detectable:.2%} at 99%)")
    from results_file import write

    print(f"raw results: {write('healthy_stock', results)} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
