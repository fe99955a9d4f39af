"""The built-in trained models: an EDM denoiser and a digit classifier for 8x8 digits (trained by
:mod:`gradcheck.models.train` on scikit-learn's digits). The weights ship inside the package, are
loaded with ``torch.load(weights_only=True)`` and verified against the SHA-256 in
``weights/manifest.json`` before use."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..sampling.denoisers import trained_denoiser
from ..weights import DENOISER_CONFIG, WEIGHTS, load_state, save_weights  # noqa: F401 - re-exported

SHAPE = (1, 8, 8)


class DigitClassifier(nn.Module):
    """A small CNN for 8x8 digits in [-1, 1]: logits over 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),  # [B, 64, 4, 4]
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),  # [B, 64, 2, 2]
            nn.Flatten(), nn.Linear(256, 128), nn.SiLU(), nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_denoiser(*, dtype: torch.dtype = torch.float32, device="cpu",
                  weights: Path | None = None) -> nn.Module:
    """The trained EDM denoiser, frozen, in eval mode."""
    return trained_denoiser(dtype=dtype, device=device, weights=weights)


def load_classifier(*, dtype: torch.dtype = torch.float32, device="cpu",
                    weights: Path | None = None) -> DigitClassifier:
    """The trained digit classifier, frozen, in eval mode."""
    model = DigitClassifier()
    model.load_state_dict(load_state("classifier", weights))
    return model.requires_grad_(False).to(device=device, dtype=dtype).eval()
