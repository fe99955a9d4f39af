"""The built-in trained models: checksums, safe loading, the training script, sample quality."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from gradcheck.errors import GradcheckError
from gradcheck.models import WEIGHTS, load_classifier, load_denoiser
from gradcheck.models.train import load_digits_tensor, main as train_main
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser


def test_shipped_weights_are_small_and_checksummed():
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    for name in ("denoiser", "classifier"):
        entry = manifest[name]
        assert entry["bytes"] < 2 * 1024 * 1024
        assert (WEIGHTS / entry["file"]).stat().st_size == entry["bytes"]
    assert manifest["classifier_heldout_accuracy"] > 0.95


def test_a_corrupted_weight_file_is_refused(tmp_path):
    shutil.copytree(WEIGHTS, tmp_path / "w")
    p = tmp_path / "w" / "denoiser.pt"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(GradcheckError, match="fail their checksum"):
        load_denoiser(weights=tmp_path / "w")
    with pytest.raises(GradcheckError, match="missing or unreadable"):
        load_classifier(weights=tmp_path / "nowhere")


def test_the_default_denoiser_is_the_trained_one():
    den = build_denoiser("digits")
    assert not any(p.requires_grad for p in den.parameters()) and not den.training
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(den(x, torch.full((2,), 0.5)), load_denoiser()(x, torch.full((2,), 0.5)))


def test_samples_are_recognisable_digits():
    den, clf = load_denoiser(), load_classifier()
    z0 = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = ResSampler(den, SamplerConfig(steps=35))(z0).clamp(-1, 1)
        conf, label = clf(x).softmax(1).max(1)
    assert (conf >= 0.9).float().mean() >= 0.75
    assert len(set(label[conf >= 0.9].tolist())) >= 9
    # and the untrained network does much worse
    with torch.no_grad():
        y = ResSampler(build_denoiser("conv"), SamplerConfig(steps=35))(z0).clamp(-1, 1)
    assert clf(y).softmax(1).max(1).values.ge(0.9).float().mean() < (conf >= 0.9).float().mean()


def test_classifier_reads_the_real_digits():
    x, y = load_digits_tensor()
    with torch.no_grad():
        acc = (load_classifier()(x).argmax(1) == y).float().mean().item()
    assert acc > 0.97


def test_training_script_runs_and_is_reproducible(tmp_path, capsys):
    for run in ("a", "b"):
        train_main(["--out", str(tmp_path / run), "--denoiser-iters", "3",
                    "--classifier-epochs", "1"])
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ma["denoiser"]["sha256"] == mb["denoiser"]["sha256"]
    assert ma["classifier"]["sha256"] == mb["classifier"]["sha256"]
    den = load_denoiser(weights=tmp_path / "a")
    assert den(torch.randn(1, 1, 8, 8), 1.0).shape == (1, 1, 8, 8)
