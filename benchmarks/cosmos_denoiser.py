"""A Cosmos-shaped video denoiser for the scale benchmark: ``gradcheck run --denoiser
benchmarks.cosmos_denoiser:factory --shape 16,8,44,80``.

Latents [B, 16, T, H, W] are patchified 2x4x4 into tokens of width 512 (as a DiT does), mixed by
``depth`` blocks (a depthwise 3x3x3 convolution over space-time and a pointwise MLP 512 -> 1024
-> 512, each block conditioned on log sigma), and unpatchified; EDM preconditioning around it.
Random weights (seeded), frozen: about 10.7M parameters with the defaults. Cheap per voxel on
purpose (the parameters sit in pointwise layers on the 32x coarser token grid), so 35 steps run
on a CPU in minutes; the activations per call are what a checkpointed sampler keeps one of.
"""
from __future__ import annotations

import torch
from torch import nn

from gradcheck.sampling import EDMDenoiser


class _Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.mix = nn.Conv3d(width, width, 3, padding=1, groups=width)  # space-time mixing
        self.norm = nn.GroupNorm(8, width)
        self.up = nn.Conv3d(width, hidden, 1)
        self.down = nn.Conv3d(hidden, width, 1)
        self.emb = nn.Linear(1, width)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # x [B, C, T, h, w]
        h = self.norm(self.mix(x)) + self.emb(s)[:, :, None, None, None]
        return x + self.down(torch.nn.functional.silu(self.up(h)))


class CosmosShapedNet(nn.Module):
    def __init__(self, channels: int = 16, width: int = 512, hidden: int = 1024,
                 depth: int = 10, patch: tuple[int, int, int] = (2, 4, 4)) -> None:
        super().__init__()
        self.inp = nn.Conv3d(channels, width, patch, stride=patch)
        self.blocks = nn.ModuleList(_Block(width, hidden) for _ in range(depth))
        self.out = nn.ConvTranspose3d(width, channels, patch, stride=patch)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        s = c_noise.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        h = self.inp(x)  # [B, 512, T/2, H/4, W/4]
        for b in self.blocks:
            h = b(h, s)
        return self.out(h)


def factory() -> nn.Module:
    torch.manual_seed(0)
    den = EDMDenoiser(CosmosShapedNet()).requires_grad_(False).eval()
    den.sample_shape = (16, 8, 44, 80)
    return den


if __name__ == "__main__":
    d = factory()
    print(sum(p.numel() for p in d.parameters()), "parameters")
