"""Video latents [B, C, T, H, W] are first-class: the built-in sampler with the 3D-conv denoiser
and the Gaussian oracle, a user sampler through the adapters, and the report's frame strips."""
from __future__ import annotations

import json

import torch

import gradcheck
from gradcheck import adapters
from gradcheck.cli import main
from gradcheck.sampling import GaussianDenoiser, ResSampler, SamplerConfig, build_denoiser


def _z0(shape=(2, 4, 3, 8, 8), dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_the_builtin_sampler_diagnoses_video_latents_exactly_with_the_oracle():
    den = GaussianDenoiser(0.0, 0.5)
    z0 = _z0()
    rep = gradcheck.diagnose(ResSampler(den, SamplerConfig(steps=4)), z0, optim_steps=1)
    assert rep.passed, [f.message for f in rep.failed]
    assert rep.numeric.rel_error < 1e-8
    assert rep.probe("x_T").shape == [2, 4, 3, 8, 8]
    assert rep.expect["frames"] == 3 and rep.expect["sample_shape"] == [1, 8, 24]


def test_the_3d_conv_denoiser_runs_from_the_command_line_with_a_video_shape(tmp_path, capsys):
    assert main(["run", "--denoiser", "conv3d", "--shape", "4,3,8,8", "--steps", "3",
                 "--mode", "default", "--out", str(tmp_path / "v"), "--graph", "never"]) == 0
    rec = json.loads((tmp_path / "v" / "report.json").read_text())
    r = rec["modes"]["default"]
    assert rec["config"]["z0_shape"] == [2, 4, 3, 8, 8]
    assert len(r["samples"]) == 2 and len(r["samples"][0]) == 8 * 3 * 8  # a strip a sample
    assert (tmp_path / "v" / "samples.png").exists()


def test_a_user_sampler_with_video_latents_through_the_adapter():
    den = build_denoiser("conv3d", dtype=torch.float64)

    def my_sampler(denoiser, z0):  # Euler in EDM form over video latents
        sig = [80.0, 10.0, 1.0, 0.0]
        x = sig[0] * z0
        for s, t in zip(sig[:-1], sig[1:]):
            d = (x - denoiser(x, torch.full((z0.shape[0],), s, dtype=z0.dtype))) / s
            x = x + (t - s) * d
        return x

    rep = gradcheck.diagnose(adapters.function(my_sampler, den), _z0(), optim_steps=0)
    assert rep.passed, [f.message for f in rep.failed]
    assert all(p.shape == [2, 4, 3, 8, 8] for p in rep.of_kind("denoiser_out"))
