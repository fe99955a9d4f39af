"""Third-party sampler conventions: k-diffusion-style functions (decorated with @torch.no_grad()
as k-diffusion's are), a plain ``fn(denoiser, z0)``, and `gradcheck run --sampler`."""
from __future__ import annotations

import os
import sys

import pytest
import torch

import gradcheck
from gradcheck import adapters
from gradcheck.cli import main
from gradcheck.sampling import SamplerConfig, build_denoiser

sys.path.insert(0, os.path.dirname(__file__))
import kdiff_like as K  # noqa: E402

TESTS = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def den():
    return build_denoiser("digits", dtype=torch.float64)


@pytest.fixture(scope="module")
def sigmas():
    s = SamplerConfig(steps=5).sigmas()
    return torch.cat([s, s.new_zeros(1)])


@pytest.fixture
def z0():
    return torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_grad_decorators_are_found_by_name():
    assert adapters.grad_decorator(K.sample_euler) == "@torch.no_grad()"
    assert adapters.grad_decorator(K.euler) is None
    assert adapters.grad_decorators(K.sample_euler) == [("@torch.no_grad()", "kdiff_like.euler")]
    assert adapters.grad_decorator(torch.inference_mode()(K.euler)) == "@torch.inference_mode()"
    assert adapters.grad_decorator(torch.enable_grad()(K.euler)) is None
    assert adapters.unwrapped(K.sample_euler) is K.euler
    assert adapters.unwrapped(K.euler) is K.euler
    assert adapters.is_kdiffusion(K.sample_euler) and adapters.takes_noise_sampler(K.sample_euler_ancestral)
    assert not adapters.takes_noise_sampler(K.sample_euler)


def test_decorated_kdiffusion_sampler_fails_naming_the_function(den, sigmas, z0):
    rep = gradcheck.diagnose(adapters.kdiffusion(K.sample_euler, den, sigmas), z0)
    assert not rep.passed and not rep.output_requires_grad
    assert rep.locator.primary.cause == "decorated_no_grad"
    assert "kdiff_like.euler" in rep.locator.primary.describe()
    assert any("unwrap=True" in n and "@torch.no_grad()" in n for n in rep.notes)


def test_unwrapped_kdiffusion_sampler_passes_and_equals_the_plain_function(den, sigmas, z0):
    fn = adapters.kdiffusion(K.sample_euler, den, sigmas, unwrap=True)
    rep = gradcheck.diagnose(fn, z0)
    assert rep.passed, [f.message for f in rep.failed]
    assert rep.mode == "custom" and "(unwrapped)" in rep.sampler
    # steps numbered by denoiser call, one per sigma pair; states probed via the callback
    assert sorted({p.step for p in rep.of_kind("denoiser_out")}) == list(range(6))
    assert [p.name for p in rep.of_kind("state")] == [f"x[{i}]" for i in range(1, 7)]
    # the adapter changes nothing: same output and same dL/dz0 as calling k-diffusion's way
    z = z0.clone().requires_grad_(True)
    out = K.euler(den, z * sigmas[0], sigmas, disable=True)
    torch.testing.assert_close(rep.handles["output"], out.detach(), rtol=0, atol=0)
    loss = rep.handles["loss_of"](out)
    (g,) = torch.autograd.grad(loss, [z])
    torch.testing.assert_close(rep.handles["z0_grad"], g, rtol=1e-12, atol=0)


def test_ancestral_noise_choices(den, sigmas, z0):
    fresh = gradcheck.diagnose(adapters.kdiffusion(K.sample_euler_ancestral, den, sigmas,
                                                   unwrap=True, noise="fresh"), z0)
    assert fresh.passed and fresh.mode == "fresh_noise"
    eps = fresh.of_kind("step_noise")
    assert len(eps) == 5 and not any(p.connected_to_z0 for p in eps)  # last step adds none
    learn = gradcheck.diagnose(adapters.kdiffusion(K.sample_euler_ancestral, den, sigmas,
                                                   unwrap=True, noise="learnable"), z0)
    assert learn.passed and learn.check("step_noise").passed and learn.check("step_noise").level == "error"
    assert all(p.connected_to_z0 and p.norm > 0 for p in learn.of_kind("step_noise"))
    leaves_fn = adapters.kdiffusion(K.sample_euler_ancestral, den, sigmas, unwrap=True,
                                    noise="leaves")
    leaves = gradcheck.diagnose(leaves_fn, z0)
    assert leaves.passed and len(leaves_fn.leaves) == 5
    # the sampler's own noise (randn_like from the global RNG): found by the scan, a warning
    own = gradcheck.diagnose(adapters.kdiffusion(K.sample_euler_ancestral, den, sigmas,
                                                 unwrap=True, noise="own"), z0)
    f = own.check("fresh_randomness")
    assert own.passed and f.level == "warning" and f.value == 5
    assert "randn_like at tests/kdiff_like.py" in f.message or "randn_like at kdiff_like.py" in f.message
    assert "euler_ancestral" in f.message


def test_fresh_noise_is_reproducible_per_call(den, sigmas, z0):
    fn = adapters.kdiffusion(K.euler_ancestral, den, sigmas, noise="fresh", seed=5)
    torch.testing.assert_close(fn(z0), fn(z0), rtol=0, atol=0)
    with pytest.raises(gradcheck.ConfigError, match="unknown noise 'bogus'"):
        adapters.kdiffusion(K.euler_ancestral, den, sigmas, noise="bogus")


def test_plain_function_adapter(den, z0):
    @torch.no_grad()
    def my_sampler(denoiser, z):
        x = z * 80.0
        for s in (80.0, 10.0, 1.0):
            x = denoiser(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        return x

    bad = gradcheck.diagnose(adapters.function(my_sampler, den), z0, numeric=False)
    assert not bad.passed and "my_sampler" in bad.locator.primary.describe()
    good = gradcheck.diagnose(adapters.function(my_sampler, den, unwrap=True), z0)
    assert good.passed and len(good.of_kind("denoiser_out")) == 3


def test_cli_runs_a_kdiffusion_sampler(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(TESTS)
    out = tmp_path / "r"
    code = main(["run", "--path", ".", "--sampler", "kdiff_like:sample_euler", "--out", str(out),
                 "--graph", "never", "--optim-steps", "1"])
    text = capsys.readouterr().out
    assert code == 2 and "kdiff_like.euler" in text and "--unwrap" in text
    code = main(["run", "--path", ".", "--sampler", "kdiff_like:sample_euler", "--unwrap", "--out", str(out),
                 "--graph", "never", "--optim-steps", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "k-diffusion euler (unwrapped)" in text
    assert (out / "index.html").exists() and "k-diffusion euler" in (out / "index.html").read_text()
    # --mode both on an ancestral sampler: its own noise, and noise derived from z0
    code = main(["run", "--path", ".", "--sampler", "kdiff_like:sample_euler_ancestral", "--unwrap", "--out",
                 str(out), "--graph", "never", "--no-numeric", "--optim-steps", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "mode custom: PASS" in text and "mode learnable_step_noise: PASS" in text
    assert "WARN  fresh_randomness" in text


@pytest.mark.parametrize("argv, needle", [
    (["--sampler", "nowhere_mod:fn"], "cannot import sampler 'nowhere_mod:fn'"),
    (["--sampler", "kdiff_like"], "is not of the form package.module:name"),
    (["--sampler", "kdiff_like:sample_euler", "--mode", "learnable_step_noise"],
     "--mode learnable_step_noise needs a k-diffusion sampler that takes a noise_sampler"),
    (["--unwrap"], "--unwrap applies to --sampler"),
    (["--sampler", "kdiff_like:sample_euler", "--checkpoint"], "apply to the built-in sampler"),
])
def test_cli_bad_sampler_specs(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(TESTS)
    assert main(["run", *argv, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "report.json").exists()


def test_numeric_check_follows_an_internal_down_cast_without_going_blind(den, z0):
    """A float64 run whose sampler steps in float32 inside (as diffusers' schedulers do): the
    numeric check is measured again at float32 (step sizes, tolerance), so it passes, and a
    gradient that is wrong by 2x under the same cast still fails."""
    from gradcheck.sampling import ResSampler

    smp = ResSampler(den, SamplerConfig(steps=4))

    def down_cast(z):
        return smp(z.float().double())

    class Half(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 0.5

    ok = gradcheck.diagnose(down_cast, z0, optim_steps=0)
    assert ok.passed, [f.message for f in ok.failed]
    assert ok.numeric.working_dtype == "float32" and ok.numeric.rtol == 2e-2
    assert "judged at float32" in ok.check("numeric_directional").message
    bad = gradcheck.diagnose(lambda z: Half.apply(down_cast(z)), z0, optim_steps=0)
    assert bad.numeric.working_dtype == "float32"
    assert not bad.check("numeric_directional").passed
