"""A diffusers scheduler loop (any model, any scheduler), and the same model in a pipeline.

    pip install diffusers && python examples/diffusers_scheduler_loop.py
"""
import torch
from diffusers import DDIMPipeline, DDIMScheduler, EulerAncestralDiscreteScheduler, UNet2DModel

import gradcheck
from gradcheck import adapters

torch.manual_seed(0)  # a small random UNet: no download (use UNet2DModel.from_pretrained(...))
unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                   block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                   up_block_types=("UpBlock2D",) * 2, norm_num_groups=4).double().eval()
z0 = torch.randn(2, 1, 8, 8, dtype=torch.float64)

for scheduler in (DDIMScheduler(), EulerAncestralDiscreteScheduler()):
    rep = gradcheck.diagnose(adapters.diffusers_loop(unet, scheduler, steps=10), z0)
    print(f"{rep.sampler}: {'PASS' if rep.passed else 'FAIL'}")
    print("  fresh randomness:", rep.check("fresh_randomness").message[:160])

pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
for unwrap in (False, True):  # pipelines decorate __call__ with @torch.no_grad()
    rep = gradcheck.diagnose(adapters.diffusers_pipeline(pipe, unwrap=unwrap,
                                                         num_inference_steps=10), z0)
    print(f"{rep.sampler}: {'PASS' if rep.passed else 'FAIL'}")
    if rep.locator and rep.locator.primary:
        print("  located:", rep.locator.primary.describe())
