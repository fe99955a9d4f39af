"""Checkpointing gives the exact gradient (randomness inside the region reproduced); truncation
does what DRaFT-K and AlignProp do to z0, and the run report says so."""
from __future__ import annotations

import json

import pytest
import torch

from gradcheck.errors import ConfigError

from gradcheck.cli import main
from gradcheck.sampling import SOLVERS, NOISE_MODES, ResSampler, SamplerConfig, build_denoiser

from .conftest import z0_like


class NoisyDenoiser(torch.nn.Module):
    """Draws from the global RNG inside the call (like dropout): recompute must reproduce it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma):
        return self.inner(x, sigma) + 1e-3 * torch.randn_like(x)


def _grad(smp, z0):
    z = z0.clone().requires_grad_(True)
    torch.manual_seed(3)
    out = smp(z)
    if not out.requires_grad:  # the whole path was cut: no gradient at all
        return None
    (g,) = torch.autograd.grad(out.square().mean(), [z], allow_unused=True)
    return g


@pytest.mark.parametrize("mode", NOISE_MODES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_checkpointing_gives_the_full_gradient_float64(solver, mode, conv64):
    z0 = z0_like()
    den = NoisyDenoiser(conv64)
    full = _grad(ResSampler(den, SamplerConfig(solver=solver, steps=4), mode=mode), z0)
    ckpt = _grad(ResSampler(den, SamplerConfig(solver=solver, steps=4, checkpoint=True), mode=mode), z0)
    assert float((ckpt - full).norm() / full.norm()) <= 1e-6


def test_truncation_state_cuts_z0_and_denoiser_biases_it(conv64):
    z0 = z0_like()
    full = _grad(ResSampler(conv64, SamplerConfig(steps=6)), z0)
    state = _grad(ResSampler(conv64, SamplerConfig(steps=6, truncate=2)), z0)
    den = _grad(ResSampler(conv64, SamplerConfig(steps=6, truncate=2, truncate_kind="denoiser")), z0)
    assert state is None  # DRaFT-K: nothing before the last K steps gets gradient
    cos = torch.nn.functional.cosine_similarity(den.flatten(), full.flatten(), dim=0)
    assert 0.0 < float(cos) < 1.0 - 1e-6  # AlignProp: a biased gradient still arrives
    # truncating to all the steps would cut nothing: refused by name (issue 30, item 13)
    with pytest.raises(ConfigError, match="truncate must be less than the 6 solver steps, got 6"):
        SamplerConfig(steps=6, truncate=6).validate()


def test_run_reports_what_truncation_does(tmp_path, capsys):
    assert main(["run", "--mode", "default", "--truncate", "2", "--out", str(tmp_path / "s")]) == 2
    out = capsys.readouterr().out
    assert "truncation: truncate 2 (state): z0 receives no gradient (None)" in out
    assert main(["run", "--mode", "default", "--truncate", "2", "--truncate-kind", "denoiser",
                 "--out", str(tmp_path / "d")]) == 2
    rec = json.loads((tmp_path / "d" / "report.json").read_text())
    t = rec["modes"]["default"]["truncation"]
    assert t["kind"] == "denoiser" and 0 < t["cosine"] < 1
    assert "cosine similarity" in (tmp_path / "d" / "index.html").read_text()


def test_checkpointed_run_passes_and_matches(tmp_path):
    assert main(["run", "--checkpoint", "--out", str(tmp_path / "c"), "--json"]) == 0
    assert main(["run", "--out", str(tmp_path / "f"), "--json"]) == 0
    c = json.loads((tmp_path / "c" / "report.json").read_text())
    f = json.loads((tmp_path / "f" / "report.json").read_text())
    for mode in ("default", "learnable_step_noise"):
        zc = next(p for p in c["modes"][mode]["probes"] if p["kind"] == "z0")
        zf = next(p for p in f["modes"][mode]["probes"] if p["kind"] == "z0")
        assert zc["norm"] == pytest.approx(zf["norm"], rel=1e-6)


def test_bad_truncation_values():
    from gradcheck.errors import ConfigError

    with pytest.raises(ConfigError, match="truncate must be an integer >= 0, got -1"):
        SamplerConfig(truncate=-1).validate()
    with pytest.raises(ConfigError, match="'half'"):
        SamplerConfig(truncate=1, truncate_kind="half").validate()
