"""Differentiable RES samplers, noise modes and denoisers (the torch side of gradcheck)."""
from __future__ import annotations

from .denoisers import (
    BUILTIN_SHAPES, EDMDenoiser, GaussianDenoiser, TinyUNet, TinyVideoNet, build_denoiser,
)
from .noise import NOISE_MODES, FreshStepNoise, LeafStepNoise, LearnableStepNoise
from .sampler import ResSampler, SamplerConfig, check_mode, karras_sigmas
from .solvers import SOLVERS, churn_eta, euler_step, phi1, phi2, res2_step, sample_res

__all__ = [
    "BUILTIN_SHAPES", "EDMDenoiser", "GaussianDenoiser", "TinyUNet", "TinyVideoNet",
    "build_denoiser",
    "NOISE_MODES", "FreshStepNoise", "LeafStepNoise", "LearnableStepNoise",
    "ResSampler", "SamplerConfig", "check_mode", "karras_sigmas",
    "SOLVERS", "churn_eta", "euler_step", "phi1", "phi2", "res2_step", "sample_res",
]
