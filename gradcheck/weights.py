"""The built-in models' weights: where they lie (inside the package), their checksums
(``weights/manifest.json``), saving and loading them (``torch.load(weights_only=True)`` after the
SHA-256 is verified). Below both the samplers (:func:`gradcheck.sampling.build_denoiser` builds the
trained denoiser) and :mod:`gradcheck.models`, so neither imports the other to reach them."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from .errors import GradcheckError

WEIGHTS = Path(__file__).parent / "models" / "weights"
#: The denoiser's architecture; part of the manifest.
DENOISER_CONFIG = {"width": 32, "emb": 64, "sigma_data": 0.75}


def save_weights(model: nn.Module, path: Path) -> dict:
    """Save a state dict; return {file, sha256, bytes, params}."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    data = buf.getvalue()
    Path(path).write_bytes(data)
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "params": sum(p.numel() for p in model.parameters())}


def load_state(name: str, weights: Path | None = None) -> dict:
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
