"""A k-diffusion-convention sampler, decorated with @torch.no_grad() as k-diffusion's are.

    python examples/kdiffusion_sampler.py
    gradcheck run --path . --sampler examples.kdiffusion_sampler:sample_euler_ancestral --unwrap
"""
import torch

import gradcheck
from gradcheck import adapters
from gradcheck.sampling import SamplerConfig, build_denoiser


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           noise_sampler=None):
    noise_sampler = noise_sampler or (lambda s, s_next: torch.randn_like(x))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones(x.shape[0]), **(extra_args or {}))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        s, s_next = sigmas[i], sigmas[i + 1]
        up = min(s_next, (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
        down = (s_next**2 - up**2) ** 0.5
        x = x + (x - denoised) / s * (down - s)
        if s_next > 0:
            x = x + noise_sampler(s, s_next) * up
    return x


if __name__ == "__main__":
    den = build_denoiser("digits", dtype=torch.float64)
    sig = SamplerConfig(steps=8).sigmas()
    sigmas = torch.cat([sig, sig.new_zeros(1)])
    z0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for unwrap in (False, True):  # as shipped (no gradient), then without the decorator
        fn = adapters.kdiffusion(sample_euler_ancestral, den, sigmas, unwrap=unwrap, noise="learnable")
        rep = gradcheck.diagnose(fn, z0)
        print(rep.sampler, "PASS" if rep.passed else "FAIL", *rep.notes, sep="\n  ")
        print("  located:", rep.locator.primary.describe() if rep.locator and rep.locator.primary else "-")
