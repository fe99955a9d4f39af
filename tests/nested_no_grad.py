"""Samplers that switch grad off the way real stacks do (Cosmos: Sampler.forward and
Sampler._forward_impl both @torch.no_grad(); a conditioner under inference_mode; a helper that
calls torch.set_grad_enabled(False) and restores it), written as plain user code so the sites
point into this file. ``sample`` has gradcheck's ``--sampler`` form ``fn(denoiser, z0)``;
``*_plain`` are the same pieces without any grad-disabling site, for the reference gradient."""
from __future__ import annotations

import torch

SIGMAS = (80.0, 10.0, 1.0, 0.0)


def _condition(x):
    with torch.inference_mode():  # a conditioner's habit
        c = x.mean() * 0 + 1.0
    return c.clone()


def _condition_plain(x):
    return (x.mean() * 0 + 1.0).clone()


def _euler(denoiser, x, cond):
    for s, t in zip(SIGMAS[:-1], SIGMAS[1:]):
        d = (x - denoiser(x, torch.full((x.shape[0],), s, dtype=x.dtype))) / s
        x = x + (t - s) * d * cond
    return x


class Sampler:
    """The Cosmos structure: a decorated entry point calling a decorated implementation."""

    @torch.no_grad()
    def forward(self, denoiser, z0):
        return self._forward_impl(denoiser, z0)

    @torch.no_grad()
    def _forward_impl(self, denoiser, z0):
        prev = torch.is_grad_enabled()
        torch.set_grad_enabled(False)  # a helper that switches and restores
        try:
            cond = _condition(z0)
        finally:
            torch.set_grad_enabled(prev)
        return _euler(denoiser, SIGMAS[0] * z0, cond)


def sample(denoiser, z0):
    return Sampler().forward(denoiser, z0)


def sample_plain(denoiser, z0):
    return _euler(denoiser, SIGMAS[0] * z0, _condition_plain(z0))


def factory():
    return sample
