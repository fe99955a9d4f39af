"""Your own sampling loop around your own model: instrument the model, diagnose the loop.

    python examples/own_loop.py
    gradcheck run --path . --sampler examples.own_loop:ddim_like --denoiser examples.own_loop:model
"""
import torch

import gradcheck
from gradcheck.sampling import build_denoiser


def model():
    """A denoiser D(x, sigma) -> x0_hat; here the built-in trained one (8x8 digits)."""
    den = build_denoiser("digits", dtype=torch.float64)
    den.sample_shape = (1, 8, 8)  # tells `gradcheck run` the shape of z0
    return den


def ddim_like(denoiser, z0, sigmas=(80.0, 20.0, 5.0, 1.0, 0.2, 0.0)):
    """fn(denoiser, z0) -> output: deterministic DDIM in sigma form."""
    x = z0 * sigmas[0]
    for s, s_next in zip(sigmas, sigmas[1:]):
        x0 = denoiser(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        x = x0 + (x - x0) * (s_next / s)
        x = x.clamp(-s_next - 3, s_next + 3) if s_next > 0 else x  # a clamp: still differentiable
    return x


if __name__ == "__main__":
    den = gradcheck.instrument(model())  # every call probed, steps numbered by call
    z0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    report = gradcheck.diagnose(lambda z: ddim_like(den, z), z0)
    print("PASS" if report.passed else "FAIL", [f.message for f in report.failed])
    for p in report.of_kind("denoiser_in"):
        print(f"  step {p.step}: |g| at the denoiser input {p.norm:.3e}")
