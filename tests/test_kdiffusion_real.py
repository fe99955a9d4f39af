"""The real k-diffusion package (k-diffusion==0.1.1.post1 from the registry), its samplers run
unmodified. Its package ``__init__`` imports training code (torchvision, kornia, clip, wandb), and
the registry's torchvision wheels are CUDA builds that cannot load against the CPU torch ("operator
torchvision::nms does not exist"), so it is installed without those dependencies and its own
``sampling.py`` and ``utils.py`` are loaded in a package shell, torchvision's image helpers (which
the samplers never use) absent. scripts/setup.sh installs it this way."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

import gradcheck
from gradcheck import adapters
from gradcheck.sampling import GaussianDenoiser, SamplerConfig


def _load_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (scripts/setup.sh installs it)")
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "torchvision",
                                             "torchvision.transforms",
                                             "torchvision.transforms.functional")}
    try:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [str(root)]
        sys.modules["k_diffusion"] = pkg
        if importlib.util.find_spec("torchvision") is None:
            tv = types.ModuleType("torchvision")
            tv.transforms = types.ModuleType("torchvision.transforms")
            tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
            sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                                "torchvision.transforms.functional": tv.transforms.functional})
        spec_s = importlib.util.spec_from_file_location("k_diffusion.sampling",
                                                        root / "sampling.py")
        sampling = importlib.util.module_from_spec(spec_s)
        sys.modules["k_diffusion.sampling"] = sampling
        spec_s.loader.exec_module(sampling)
        return sampling
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k in [k for k in sys.modules if k.startswith("k_diffusion.")]:
            sys.modules.pop(k, None)


K = None


@pytest.fixture(scope="module")
def k():
    global K
    K = K or _load_sampling()
    return K


DEN = GaussianDenoiser(0.1, 0.5)


def _sigmas():
    sig = SamplerConfig(steps=4).sigmas()
    return torch.cat([sig, sig.new_zeros(1)])


def _z0():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpmpp_2m",
                                  "sample_lms"])
def test_the_real_deterministic_samplers_fail_as_is_and_pass_allowed(k, name):
    fn = getattr(k, name)
    assert adapters.is_kdiffusion(fn)
    rep = gradcheck.diagnose(adapters.kdiffusion(fn, DEN, _sigmas()), _z0(), numeric=False,
                             optim_steps=0)
    p = rep.locator.primary
    assert not rep.passed and p.sites and p.sites[0].startswith(f"@torch.no_grad() on "
                                                                f"k_diffusion.sampling.{name}")
    assert "k_diffusion/sampling.py:" in p.sites[0]
    ok = gradcheck.diagnose(adapters.kdiffusion(fn, DEN, _sigmas()), _z0(), allow_grad=True,
                            optim_steps=0)
    assert ok.passed, [f.message for f in ok.failed]
    assert ok.allowed_grad[0].function == f"k_diffusion.sampling.{name}"
    unwrapped = gradcheck.diagnose(adapters.kdiffusion(fn, DEN, _sigmas(), unwrap=True), _z0(),
                                   optim_steps=0)
    assert unwrapped.passed
    assert torch.equal(unwrapped.handles["z0_grad"], ok.handles["z0_grad"])


def test_the_real_ancestral_sampler_takes_learnable_noise(k):
    fn = k.sample_euler_ancestral
    assert adapters.takes_noise_sampler(fn)
    rep = gradcheck.diagnose(adapters.kdiffusion(fn, DEN, _sigmas(), noise="learnable",
                                                 unwrap=True), _z0(),
                             mode="learnable_step_noise", optim_steps=1)
    assert rep.passed, [f.message for f in rep.failed]
    assert rep.of_kind("step_noise") and all(p.status == "ok"
                                             for p in rep.of_kind("step_noise")[:-1])
