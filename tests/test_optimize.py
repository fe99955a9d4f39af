"""gradcheck optimize: objectives, regularisers, outputs, checks, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from gradcheck.cli import main
from gradcheck.errors import ConfigError, InputError
from gradcheck.models import load_classifier
from gradcheck.optimizing import chi_nll, parse_objective, run_optimize
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser

from .browser import Page, chromium_path

FAST = ["--steps", "8", "--batch", "4", "--no-progress"]


@pytest.fixture(scope="module")
def den():
    return build_denoiser("digits")


def test_class_objective_turns_samples_into_the_digit(tmp_path, capsys):
    assert main(["optimize", "--objective", "class:7", "--iters", "30", "--steps", "16",
                 "--batch", "4", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS  objective_moves" in out
    data = json.loads((tmp_path / "optimize.json").read_text())
    assert data["class_hits"] >= 3 and data["class_hits"] > data["class_hits_before"]
    for f in ("loss_curve.png", "samples_before_after.png", "z0_norm.png", "index.html"):
        assert (tmp_path / f).exists()
    r = data["result"]
    assert len(r["values"]) == 31 and len(r["grad_norms"]) == 30
    if chromium_path():
        with Page() as page:
            page.goto(tmp_path / "index.html")
            sections = page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)")
            assert page.errors() == []
        assert sections == ["verdict", "checks", "curves", "samples", "config", "environment"]


@pytest.mark.parametrize("reg", ["chi", "renorm"])
def test_norm_regularisers_keep_z0_on_the_shell(reg, den):
    smp = ResSampler(den, SamplerConfig(steps=6))
    z0 = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    obj, start = parse_objective("diverge", sampler=smp, z0=z0)
    res, z = run_optimize(smp, start, obj, iters=15, lr=0.1, norm_reg=reg)
    shell = next(c for c in res.checks if c.name == "z0_plausible")
    assert shell.passed, shell.message
    assert res.passed and res.values[-1] > res.values[0]


def test_without_regulariser_the_norm_drifts_further_than_with(den):
    smp = ResSampler(den, SamplerConfig(steps=6))
    z0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    obj, start = parse_objective("diverge", sampler=smp, z0=z0)
    free, _ = run_optimize(smp, start, obj, iters=15, lr=0.3)
    held, _ = run_optimize(smp, start, obj, iters=15, lr=0.3, norm_reg="renorm")
    drift = lambda r: max(abs(n / r.sqrt_d - 1) for n in r.z_norms)  # noqa: E731
    assert drift(held) < drift(free)


def test_diverge_starts_from_a_perturbation_because_the_gradient_is_zero_at_z0(den):
    smp = ResSampler(den, SamplerConfig(steps=6))
    z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    obj, start = parse_objective("diverge", sampler=smp, z0=z0, perturb=1e-2)
    assert 0 < float((start - z0).abs().max()) < 0.1
    z = z0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.loss(smp(z)), [z])
    assert float(g.abs().max()) == 0.0  # exactly zero at z0: the reason for the perturbation
    assert "exactly zero" in obj.description


def test_target_objective_from_png_and_bad_shapes(tmp_path, den):
    import matplotlib.pyplot as plt
    import numpy as np

    img = np.zeros((8, 8))
    img[2:6, 3:5] = 1.0
    plt.imsave(tmp_path / "t.png", img, cmap="gray", vmin=0, vmax=1)
    smp = ResSampler(den, SamplerConfig(steps=6))
    z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    obj, start = parse_objective(f"target:{tmp_path / 't.png'}", sampler=smp, z0=z0)
    res, _ = run_optimize(smp, start, obj, iters=10, lr=0.1)
    assert res.direction == "down" and res.values[-1] < res.values[0]
    np.save(tmp_path / "bad.npy", np.zeros((5, 5)))
    with pytest.raises(InputError, match=r"shape \(5, 5\), expected 64 values"):
        parse_objective(f"target:{tmp_path / 'bad.npy'}", sampler=smp, z0=z0)


def test_independent_leaves_optimises_the_step_noises_too(den):
    smp = ResSampler(den, SamplerConfig(steps=6), mode="independent_leaves")
    z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    obj, start = parse_objective("class:1", sampler=smp, z0=z0, classifier=load_classifier())
    smp(start)
    before = [leaf.detach().clone() for leaf in smp.leaves]
    res, _ = run_optimize(smp, start, obj, iters=5, lr=0.1)
    assert res.passed
    assert all(not torch.equal(b, leaf.detach()) for b, leaf in zip(before, smp.leaves))


def test_garbage_z0_cannot_pass(tmp_path, capsys):
    # lr 1e6 "reaches" log p = 0 on saturated noise: the objective moved, the samples are garbage
    code = main(["optimize", "--objective", "class:3", "--iters", "5", "--lr", "1e6", "--steps",
                 "4", "--no-progress", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "FAIL  z0_plausible: mean ||z0||" in out and "sd from a Gaussian draw's" in out
    rec = json.loads((tmp_path / "o" / "optimize.json").read_text())
    assert rec["result"]["batch"] == 8
    assert not next(c for c in rec["result"]["checks"] if c["name"] == "z0_plausible")["passed"]


def test_the_plausibility_band_is_computed_and_raises_no_false_alarm():
    from gradcheck.checks import PLAUSIBLE_SIGMAS, chi_band, optimize_checks
    from gradcheck.records import OptimizeResult

    d, batch = 64, 8
    mu, sd = chi_band(d, batch)
    g = torch.Generator().manual_seed(0)
    norms = torch.randn(20000, batch, d, generator=g, dtype=torch.float64).norm(dim=2).mean(1)
    assert abs(float(norms.mean()) - mu) < 3 * sd / 20000 ** 0.5 + 1e-3  # the chi mean
    assert abs(float(norms.std()) / sd - 1) < 0.03  # and the spread of a batch's mean norm
    fixed_5pct = float(((norms / d ** 0.5 - 1).abs() > 0.05).double().mean())
    assert fixed_5pct > 0.08  # the old fixed band failed ~11% of honest draws (renorm keeps them)

    def result(z_norms):
        return OptimizeResult(objective="diverge", description="", direction="up", iters=1,
                              lr=0.1, clip=None, norm_reg="renorm", mode="default",
                              values=[0.0, 1.0], losses=[0.0, -1.0], grad_norms=[1.0],
                              z_norms=z_norms, sqrt_d=d ** 0.5, z_finite=True, seconds=0.0,
                              batch=batch)

    alarms = 0
    for n in norms[:5000].tolist():  # renorm: every iteration has the honest draw's mean norm
        checks = optimize_checks(result([n, n]))
        alarms += not next(c for c in checks if c.name == "z0_plausible").passed
    assert alarms == 0
    drift = optimize_checks(result([mu, mu + 4 * sd]))
    warn = next(c for c in drift if c.name == "z0_norm_drift")
    assert warn.level == "warning" and warn.passed
    r = result([mu, mu + 4 * sd])
    r.checks = drift
    assert r.passed  # a warning never fails the run
    far = optimize_checks(result([mu, mu + (PLAUSIBLE_SIGMAS + 0.5) * sd]))
    assert not next(c for c in far if c.name == "z0_plausible").passed
    nan = optimize_checks(result([mu, float("nan")]))
    assert not next(c for c in nan if c.name == "z0_plausible").passed


def test_chi_nll_is_minimal_on_the_shell():
    d = 64
    z = torch.randn(1, d)
    vals = [float(chi_nll(z / z.norm() * r)) for r in (6.0, (d - 1) ** 0.5, 10.0)]
    assert vals[1] < vals[0] and vals[1] < vals[2]


@pytest.mark.parametrize("args,needle", [
    (["--objective", "class:12"], "class must be 0..9, got 12"),
    (["--objective", "class:x"], "class must be a digit"),
    (["--objective", "sideways"], "unknown objective 'sideways'"),
    (["--objective", "target:/nope.png"], "cannot load target image '/nope.png'"),
    (["--mode", "sometimes"], "unknown mode 'sometimes'"),
    (["--iters", "0"], "iters must be >= 1, got 0"),
    (["--clip", "-1"], "clip must be > 0"),
    (["--norm-reg", "l2"], "invalid choice: 'l2'"),
    (["--chi-weight", "-3"], "chi-weight must be >= 0 (and finite: the weight of the chi "
                             "penalty), got -3.0"),
    (["--lr", "nan"], "lr must be > 0 (and finite), got nan"),
    (["--perturb", "-1"], "perturb must be >= 0 (and finite), got -1.0"),
    (["--denoiser", "no_such_mod:make"], "cannot import denoiser 'no_such_mod:make'"),
    (["--dtype", "int4"], "unknown dtype 'int4'"),
])
def test_bad_input_is_one_line(args, needle, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["optimize", *FAST, *args, "--out", str(out_dir)]) == 1
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()  # nothing created, not even an empty directory
