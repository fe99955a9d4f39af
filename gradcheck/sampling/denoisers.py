"""Built-in denoisers ``D(x, sigma) -> x0_hat`` (sigma: a [B] tensor or a float).

- :class:`GaussianDenoiser`: the exact denoiser of the data distribution N(mu, s^2 I). Its
  probability-flow ODE has a closed-form solution, so it is the oracle the tests check the solvers
  and the gradients against.
- :class:`EDMDenoiser` around :class:`TinyUNet`: a small convolutional network with EDM
  preconditioning (Karras et al. 2022): D(x, sigma) = c_skip x + c_out F(c_in x, c_noise).
  Weights are seeded; a trained version is a later addition.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..rng import seeded
from ..weights import DENOISER_CONFIG, load_state


def _sigma_like(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """sigma as a tensor broadcastable against x: [B, 1, 1, ...]."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class GaussianDenoiser(nn.Module):
    """Exact denoiser for data ~ N(mu, s^2 I): D(x, sigma) = mu + s^2/(s^2 + sigma^2) (x - mu)."""

    def __init__(self, mu: float = 0.0, s: float = 0.5) -> None:
        super().__init__()
        if not s > 0:
            raise ConfigError(f"GaussianDenoiser needs s > 0, got {s!r}")
        self.mu = float(mu)
        self.s = float(s)

    def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        sig = _sigma_like(sigma, x)
        return self.mu + self.s**2 / (self.s**2 + sig**2) * (x - self.mu)

    def ode_solution(self, x_T: torch.Tensor, sigma_max: float, sigma: float) -> torch.Tensor:
        """The exact probability-flow ODE solution at noise level sigma, started at x_T."""
        k = math.sqrt(self.s**2 + sigma**2) / math.sqrt(self.s**2 + sigma_max**2)
        return self.mu + k * (x_T - self.mu)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, s={self.s}"


class _Block(nn.Module):
    """Residual conv block with a FiLM (scale, shift) conditioning on the noise embedding."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))  # [B, cout, H, W]
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(torch.nn.functional.silu(h))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """F(x, c_noise): a two-level UNet for small images (8x8 digits by default)."""

    def __init__(self, channels: int = 1, width: int = 32, emb: int = 64) -> None:
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(emb // 2) * 4.0, requires_grad=False)
        self.emb = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down1 = _Block(width, width, emb)
        self.pool = nn.AvgPool2d(2)
        self.mid = _Block(width, 2 * width, emb)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.up1 = _Block(3 * width, width, emb)
        self.out_norm = nn.GroupNorm(8, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        f = c_noise[:, None] * self.freqs[None, :].to(x.dtype)  # [B, emb/2]
        e = self.emb(torch.cat([f.sin(), f.cos()], dim=1))  # [B, emb]
        h0 = self.inp(x)  # [B, w, H, W]
        h1 = self.down1(h0, e)  # [B, w, H, W]
        h2 = self.mid(self.pool(h1), e)  # [B, 2w, H/2, W/2]
        h3 = self.up1(torch.cat([self.up(h2), h1], dim=1), e)  # [B, w, H, W]
        return self.out(torch.nn.functional.silu(self.out_norm(h3)))  # [B, C, H, W]


class EDMDenoiser(nn.Module):
    """EDM preconditioning around a network F(x_in, c_noise):

        D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)
        c_skip = sd^2/(sigma^2 + sd^2), c_out = sigma sd/sqrt(sigma^2 + sd^2),
        c_in = 1/sqrt(sigma^2 + sd^2), c_noise = ln(sigma)/4
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        sig = _sigma_like(sigma, x)  # [B, 1, 1, 1]
        sd = self.sigma_data
        c_skip = sd**2 / (sig**2 + sd**2)
        c_out = sig * sd / (sig**2 + sd**2).sqrt()
        c_in = 1.0 / (sig**2 + sd**2).sqrt()
        c_noise = sig.reshape(-1).log() / 4.0  # [B]
        return c_skip * x + c_out * self.net(c_in * x, c_noise)


class TinyVideoNet(nn.Module):
    """F(x, c_noise) for video latents [B, C, T, H, W]: 3D convolutions (3x3x3) with a FiLM
    conditioning on the noise embedding, a residual block at full resolution and one at half
    the spatial resolution. Small on purpose: the sampler and gradcheck's probes, not the
    network, are what a run at a Cosmos-sized latent measures."""

    def __init__(self, channels: int = 4, width: int = 16, emb: int = 32) -> None:
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(emb // 2) * 4.0, requires_grad=False)
        self.emb = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv3d(channels, width, 3, padding=1)
        self.film1 = nn.Linear(emb, 2 * width)
        self.conv1 = nn.Conv3d(width, width, 3, padding=1)
        self.pool = nn.AvgPool3d((1, 2, 2))
        self.film2 = nn.Linear(emb, 2 * width)
        self.conv2 = nn.Conv3d(width, width, 3, padding=1)
        self.up = nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")
        self.out = nn.Conv3d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        f = c_noise[:, None] * self.freqs[None, :].to(x.dtype)
        e = self.emb(torch.cat([f.sin(), f.cos()], dim=1))  # [B, emb]
        h = self.inp(x)  # [B, w, T, H, W]
        s1, b1 = self.film1(e)[:, :, None, None, None].chunk(2, dim=1)
        h = h + self.conv1(torch.nn.functional.silu(h * (1 + s1) + b1))
        s2, b2 = self.film2(e)[:, :, None, None, None].chunk(2, dim=1)
        low = self.pool(h)
        low = low + self.conv2(torch.nn.functional.silu(low * (1 + s2) + b2))
        h = h + self.up(low)
        return self.out(torch.nn.functional.silu(h))  # [B, C, T, H, W]


#: Built-in denoisers by name, and the sample shape each expects: (C, H, W) images, or
#: (C, T, H, W) video latents for ``conv3d``.
BUILTIN_SHAPES: dict[str, tuple[int, ...]] = {"digits": (1, 8, 8), "conv": (1, 8, 8),
                                              "gaussian": (1, 8, 8), "conv3d": (4, 4, 8, 8)}


def trained_denoiser(*, dtype: torch.dtype = torch.float32, device="cpu",
                  weights: str | Path | None = None) -> nn.Module:
    """The trained EDM denoiser, frozen, in eval mode."""
    cfg = DENOISER_CONFIG
    model = EDMDenoiser(TinyUNet(channels=1, width=cfg["width"], emb=cfg["emb"]),
                        sigma_data=cfg["sigma_data"])
    model.load_state_dict(load_state("denoiser", weights))
    return model.requires_grad_(False).to(device=device, dtype=dtype).eval()


def build_denoiser(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> nn.Module:
    """A built-in denoiser by name: ``digits`` (the trained EDM denoiser of 8x8 digits, shipped
    with the package), ``conv`` (the same network with seeded random weights), ``gaussian``
    (the exact denoiser of Gaussian data: the oracle, any shape) or ``conv3d`` (a small 3D-conv
    network with seeded random weights for video latents [C, T, H, W])."""
    if name == "digits":
        return trained_denoiser(dtype=dtype, device=device)
    if name == "gaussian":
        return GaussianDenoiser(mu=0.0, s=0.5)
    if name == "conv":
        with seeded(seed, torch.device("cpu")):
            model = EDMDenoiser(TinyUNet(channels=BUILTIN_SHAPES["conv"][0]))
        model.requires_grad_(False)  # noise optimisation: the weights are frozen
        return model.to(device=device, dtype=dtype).eval()
    if name == "conv3d":
        with seeded(seed, torch.device("cpu")):
            model = EDMDenoiser(TinyVideoNet(channels=BUILTIN_SHAPES["conv3d"][0]))
        model.requires_grad_(False)
        model.sample_shape = BUILTIN_SHAPES["conv3d"]
        return model.to(device=device, dtype=dtype).eval()
    raise ConfigError(
        f"unknown built-in denoiser {name!r}; choose one of {', '.join(BUILTIN_SHAPES)} "
        f"or give package.module:factory"
    )
