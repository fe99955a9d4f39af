"""The plain sampler the idiom matrix varies: a small seeded network as the denoiser and an
Euler loop over five noise levels, with a hook at each place an idiom goes (before the denoiser
call, on its output, after the update)."""
from __future__ import annotations

from typing import Any, Callable

import torch

import gradcheck

SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.0]

Hook = Callable[[int, torch.Tensor], torch.Tensor]


def small_net(hidden: int = 16, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, 8)).to(dtype)


def net_denoiser(net: torch.nn.Module) -> Callable[[torch.Tensor, float], torch.Tensor]:
    return lambda x, s: net(x) + x / (1 + s)


def euler_loop(den: Callable[..., Any], *, before: Hook | None = None,
               on_call: Hook | None = None, after: Hook | None = None,
               sigmas: list[float] = SIGMAS) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z0 -> output``: ``x = z0 * sigmas[0]``; at step i, ``x = before(i, x)``, the
    instrumented denoiser's ``d = on_call(i, den(x, sigma_i))``, the Euler update, then
    ``x = after(i, x)``."""
    den = gradcheck.instrument(den)

    def sample(z0: torch.Tensor) -> torch.Tensor:
        x = z0 * sigmas[0]
        for i in range(len(sigmas) - 1):
            x = before(i, x) if before else x
            d = den(x, sigmas[i])
            d = on_call(i, d) if on_call else d
            x = x + (sigmas[i + 1] - sigmas[i]) * (x - d) / sigmas[i]
            x = after(i, x) if after else x
        return x
    return sample
