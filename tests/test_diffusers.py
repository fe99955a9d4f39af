"""The real diffusers package (from PyPI) with a small randomly initialised UNet2DModel (no
download): a DDIM scheduler loop, an Euler-ancestral one (fresh noise in scheduler.step) and a
pipeline whose __call__ is decorated with @torch.no_grad()."""
from __future__ import annotations

import pytest
import torch

import gradcheck
from gradcheck import adapters
from gradcheck.testing import assert_gradient_flows, assert_no_disconnected_randomness

diffusers = pytest.importorskip("diffusers")
# diffusers' schedulers trip NumPy 2's __array__(copy=) deprecation on torch tensors
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tiny_unet():
    """A small randomly initialised UNet2DModel for 1x8x8 samples (seed 0), float32."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet().double()


@pytest.fixture
def z0():
    # float64: the numeric check is then exact to 1e-5 (in float32, DDIM's clip_sample kink and
    # round-off put finite differences a few % off after a few steps)
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_ddim_loop_is_healthy_and_unchanged_by_the_adapter(unet, z0):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
    fn = adapters.diffusers_loop(unet, sched, steps=5)
    rep = gradcheck.diagnose(fn, z0)
    assert rep.passed, [f.message for f in rep.failed]
    assert rep.check("fresh_randomness").value == 0  # DDIM (eta 0) is deterministic
    assert sorted({p.step for p in rep.of_kind("denoiser_out")}) == list(range(5))
    # the plain loop, written out: the same output and the same dL/dz0
    z = z0.clone().requires_grad_(True)
    sched.set_timesteps(5)
    x = z * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    torch.testing.assert_close(rep.handles["output"], x.detach(), rtol=0, atol=0)
    (g,) = torch.autograd.grad(rep.handles["loss_of"](x), [z])
    torch.testing.assert_close(rep.handles["z0_grad"], g, rtol=1e-10, atol=1e-12)


def test_euler_ancestral_reaches_z0_and_reports_disconnected_step_noise(unet, z0):
    sched = diffusers.EulerAncestralDiscreteScheduler(num_train_timesteps=1000)
    fn = adapters.diffusers_loop(unet, sched, steps=5, seed=0)
    torch.testing.assert_close(fn(z0), fn(z0), rtol=0, atol=0)  # seeded generator per call
    rep = assert_gradient_flows(fn, z0, to="every_step")
    rep = gradcheck.diagnose(fn, z0, optim_steps=0)
    assert rep.passed, [f.message for f in rep.failed]
    f = rep.check("fresh_randomness")
    # one draw per step, but the last: there it is multiplied by sigma_up = 0 exactly
    assert f.level == "warning" and f.value == 4
    assert "scheduling_euler_ancestral_discrete.py" in f.message and "(step)" in f.message
    with pytest.raises(AssertionError, match="fresh random draw") as err:
        assert_no_disconnected_randomness(fn, z0)
    assert "scheduling_euler_ancestral_discrete.py" in str(err.value)


def test_decorated_pipeline_fails_naming_the_decorator_and_unwrap_passes(unet, z0):
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
    config_before = dict(pipe.config)
    rep = gradcheck.diagnose(adapters.diffusers_pipeline(pipe, num_inference_steps=4), z0,
                             numeric=False, optim_steps=0)
    assert not rep.passed and rep.locator.primary.cause == "decorated_no_grad"
    assert "DDIMPipeline.__call__" in rep.locator.primary.describe()
    assert any("@torch.no_grad()" in n and "DDIMPipeline.__call__" in n for n in rep.notes)
    with pytest.raises(AssertionError, match="does not require grad") as err:
        assert_gradient_flows(adapters.diffusers_pipeline(pipe, num_inference_steps=4), z0)
    assert "decorated with @torch.no_grad()" in str(err.value)
    ok = gradcheck.diagnose(adapters.diffusers_pipeline(pipe, unwrap=True, num_inference_steps=4),
                            z0, numeric=False, optim_steps=0)
    assert ok.passed, [f.message for f in ok.failed]
    assert len(ok.of_kind("denoiser_out")) == 4
    # z0 really is the pipeline's initial noise: the output equals the DDIM loop's
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
    loop = adapters.diffusers_loop(unet, sched, steps=4)
    with torch.no_grad():
        ref = (loop(z0) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ok.handles["output"], ref, rtol=1e-5, atol=1e-6)
    assert pipe.unet is unet and dict(pipe.config) == config_before  # restored, config intact


def test_the_pipelines_progress_bar_setting_is_the_users_again_after_a_diagnosis(unet, z0):
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(desc="mine", leave=False)
    seen = []
    real = type(pipe).progress_bar

    def spy(self, *a, **kw):  # what the pipeline's own progress bar is configured with, in-call
        seen.append(dict(self._progress_bar_config))
        return real(self, *a, **kw)

    fn = adapters.diffusers_pipeline(pipe, unwrap=True, num_inference_steps=2)
    type(pipe).progress_bar = spy
    try:
        gradcheck.diagnose(fn, z0, numeric=False, optim_steps=0)
    finally:
        type(pipe).progress_bar = real
    assert seen and all(c.get("disable") is True for c in seen)  # quiet during the diagnosis
    assert pipe._progress_bar_config == {"desc": "mine", "leave": False}  # the user's, after


def test_clip_sample_and_the_final_clamp_are_no_false_alarm_in_float32(unet):
    # the stock DDIM pipeline (clip_sample=True, and its image clamp to [0, 1]) in float32: for
    # some seeds the finite difference straddles a clamp's kink; reverse mode is right there
    import copy

    net = copy.deepcopy(unet).float()
    verdicts = []
    for seed in range(8):
        pipe = diffusers.DDIMPipeline(unet=net, scheduler=diffusers.DDIMScheduler(
            num_train_timesteps=1000, clip_sample=True))
        z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        rep = gradcheck.diagnose(adapters.diffusers_pipeline(pipe, unwrap=True,
                                                             num_inference_steps=4),
                                 z0, optim_steps=0)
        assert rep.passed, (seed, [f.message for f in rep.failed])
        verdicts.append(rep.numeric.verdict)
    assert "kink" in verdicts and "disagrees" not in verdicts, verdicts


STOCHASTIC = {"DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
SCHEDULERS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
              "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
              "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
              "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "UniPCMultistepScheduler", "DEISMultistepScheduler"]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_stock_scheduler_passes_and_reports_its_randomness(unet, name):
    # float32, the tiny random UNet, 5 steps, two seeds: deterministic schedulers pass, the
    # stochastic ones pass and report their fresh noise; no false alarm
    import copy
    import warnings

    net = copy.deepcopy(unet).float()
    for seed in range(2):
        fn = adapters.diffusers_loop(net, getattr(diffusers, name)(num_train_timesteps=1000),
                                     steps=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = gradcheck.diagnose(fn, torch.randn(2, 1, 8, 8, generator=torch.Generator()
                                                     .manual_seed(seed)), optim_steps=1)
        assert rep.passed, (name, seed, [f.message for f in rep.failed])
        level = rep.check("fresh_randomness").level
        assert level == ("warning" if name in STOCHASTIC else "info"), (name, level)
        if name == "PNDMScheduler":  # its last UNet call is scaled by an exact-zero coefficient
            f = rep.check("grad_reaches_every_step")
            assert f.level == "warning" and "does not influence the output" in f.message
            assert "scheduling_pndm.py:" in f.message and "a wasted evaluation" in f.message
            assert rep.locator.primary.cause == "constant_zero"


def test_allow_grad_looks_past_a_stock_pipelines_decorators_and_names_them(unet, z0):
    # no unwrap: the real package's @torch.no_grad() __call__ (and any decorated helper it
    # calls) is neutralised for the call, listed as what to change, and restored afterwards
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(
        num_train_timesteps=1000))
    real_set = torch._C._set_grad_enabled
    rep = gradcheck.diagnose(adapters.diffusers_pipeline(pipe, num_inference_steps=4), z0,
                             allow_grad=True, optim_steps=0)
    assert rep.passed, [f.message for f in rep.failed]
    assert [s.api for s in rep.allowed_grad][:1] == ["@torch.no_grad()"]
    assert rep.allowed_grad[0].function.endswith("DDIMPipeline.__call__")
    assert "pipeline_ddim.py:" in rep.allowed_grad[0].location
    assert torch._C._set_grad_enabled is real_set and torch.is_grad_enabled()
