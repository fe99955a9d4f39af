"""The built-in trained models: an EDM denoiser and a digit classifier for 8x8 digits (trained by
:mod:`gradcheck.models.train` on scikit-learn's digits). The weights ship inside the package, are
loaded with ``torch.load(weights_only=True)`` and verified against the SHA-256 in
``weights/manifest.json`` before use."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import GradcheckError

WEIGHTS = Path(__file__).parent / "weights"
#: The denoiser's architecture; part of the manifest.
DENOISER_CONFIG = {"width": 32, "emb": 64, "sigma_data": 0.75}
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


def save_weights(model: nn.Module, path: Path) -> dict:
    """Save a state dict; return {file, sha256, bytes, params}."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    data = buf.getvalue()
    Path(path).write_bytes(data)
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "params": sum(p.numel() for p in model.parameters())}


def _load_state(name: str, weights: Path | None = None) -> dict:
    folder = Path(weights) if weights else WEIGHTS
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = manifest[name]
        data = (folder / entry["file"]).read_bytes()
    except (OSError, KeyError, ValueError) as exc:
        raise GradcheckError(f"built-in {name} weights missing or unreadable in {folder}: {exc}; "
                             f"retrain with python -m gradcheck.models.train --out {folder}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise GradcheckError(f"built-in {name} weights fail their checksum ({digest[:12]}... != "
                             f"{entry['sha256'][:12]}...): the file is corrupt or was replaced")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_denoiser(*, dtype: torch.dtype = torch.float32, device="cpu",
                  weights: Path | None = None) -> nn.Module:
    """The trained EDM denoiser, frozen, in eval mode."""
    from ..sampling.denoisers import EDMDenoiser, TinyUNet

    cfg = DENOISER_CONFIG
    model = EDMDenoiser(TinyUNet(channels=1, width=cfg["width"], emb=cfg["emb"]),
                        sigma_data=cfg["sigma_data"])
    model.load_state_dict(_load_state("denoiser", weights))
    return model.requires_grad_(False).to(device=device, dtype=dtype).eval()


def load_classifier(*, dtype: torch.dtype = torch.float32, device="cpu",
                    weights: Path | None = None) -> DigitClassifier:
    """The trained digit classifier, frozen, in eval mode."""
    model = DigitClassifier()
    model.load_state_dict(_load_state("classifier", weights))
    return model.requires_grad_(False).to(device=device, dtype=dtype).eval()
