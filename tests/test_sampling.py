"""The RES sampler against the math: schedule, solver order on the Gaussian oracle, churn, dtypes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradcheck.errors import ConfigError, DenoiserError
from gradcheck.sampling import (
    SOLVERS, GaussianDenoiser, SamplerConfig, build_denoiser, churn_eta, karras_sigmas, phi1, phi2,
    res2_step, euler_step, sample_res,
)

from .conftest import sampler, z0_like


def test_karras_schedule_matches_formula():
    sig = karras_sigmas(10, 0.002, 80.0, 7.0)
    assert sig.dtype == torch.float64 and sig.shape == (11,)
    assert sig[0].item() == 80.0 and sig[-1].item() == 0.002
    i = torch.arange(11, dtype=torch.float64)
    expect = (80 ** (1 / 7) + i / 10 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(sig, expect, rtol=1e-12, atol=0)
    assert bool((sig[1:] < sig[:-1]).all())


def test_phi_functions_accurate_near_zero():
    for z in [-1e-9, -1e-6, -1e-4, -1e-3, -0.5, -3.0]:
        exact1 = float(np.expm1(z) / z)
        assert phi1(z) == pytest.approx(exact1, rel=1e-9)
        # phi2 = sum z^k / (k+2)!
        series = sum(z**k / math.factorial(k + 2) for k in range(30))
        assert phi2(z) == pytest.approx(series, rel=1e-9)


def test_res_core_reduces_to_euler_when_predictions_equal():
    x, x0 = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(res2_step(x, x0, x0, 5.0, 3.0, 1.0), euler_step(x, x0, 5.0, 1.0))


def _rel_err(solver: str, n: int) -> float:
    den = GaussianDenoiser(mu=0.1, s=0.5)
    steps = 2 * n if solver == "2mid" else n
    cfg = SamplerConfig(solver=solver, steps=steps)
    x_T = 80.0 * z0_like()
    x_N = sample_res(den, x_T, cfg.sigmas(), solver=solver, final_denoise=False)
    exact = den.ode_solution(x_T, 80.0, 0.002)
    return float((x_N - exact).norm() / exact.norm())


@pytest.mark.parametrize("solver,order", [("2ab", 2.0), ("2mid", 2.0), ("1euler", 1.0)])
def test_convergence_order_on_gaussian_oracle(solver, order):
    ns = [18, 35, 70, 140]
    errs = [_rel_err(solver, n) for n in ns]
    # local order at the finest pair (the coarse end is pre-asymptotic)
    slope = math.log(errs[-2] / errs[-1]) / math.log(ns[-1] / ns[-2])
    assert slope == pytest.approx(order, abs=0.15), (solver, errs)
    assert all(b < a for a, b in zip(errs, errs[1:]))


def test_reference_numbers_of_2ab_and_euler():
    # shared/reference/res-sampler.md: 2ab 9e-2, 1.9e-2, 4.4e-3, 1.0e-3 at N = 18, 35, 70, 140
    got = [_rel_err("2ab", n) for n in (18, 35, 70, 140)]
    for g, ref in zip(got, [9.2e-2, 1.9e-2, 4.4e-3, 1.0e-3]):
        assert g == pytest.approx(ref, rel=0.06)
    assert _rel_err("1euler", 35) == pytest.approx(7.8e-2, rel=0.05)


def test_final_denoise_is_clean_prediction_at_sigma_min(gaussian):
    cfg = SamplerConfig(steps=6)
    x_T = 80.0 * z0_like()
    x_N = sample_res(gaussian, x_T, cfg.sigmas(), final_denoise=False)
    out = sample_res(gaussian, x_T, cfg.sigmas())
    torch.testing.assert_close(out, gaussian(x_N, 0.002))


def test_denoiser_call_counts_and_sigmas_seen(gaussian):
    seen = []

    def den(x, sigma):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        seen.append(float(sigma[0]))
        return gaussian(x, sigma)

    for solver, steps, calls in [("2ab", 5, 6), ("1euler", 5, 6), ("2mid", 6, 7), ("2mid", 1, 3)]:
        seen.clear()
        cfg = SamplerConfig(solver=solver, steps=steps)
        sample_res(den, 80.0 * z0_like(), cfg.sigmas(), solver=solver)
        assert len(seen) == calls, (solver, steps)
        assert seen[0] == pytest.approx(80.0) and seen[-1] == pytest.approx(0.002)


def test_churn_raises_sigma_and_injects_scaled_noise(gaussian):
    n = 4
    eta = churn_eta(40.0, n)
    assert eta == pytest.approx(math.sqrt(1.2) - 1)
    assert churn_eta(0.25, n) == pytest.approx(0.25 / 5)
    seen, noise_calls = [], []

    def den(x, sigma):
        seen.append(float(sigma[0]))
        return gaussian(x, sigma)

    def noise(i, x):
        noise_calls.append(i)
        return torch.zeros_like(x)

    sig = SamplerConfig(steps=n).sigmas()
    sample_res(den, 80.0 * z0_like(), sig, s_churn=40.0, s_min=1.0, s_max=50.0, step_noise=noise)
    # churn only where s_min < sigma < s_max: steps 1 and 2 here (sigmas 17.5, 2.5)
    churned = [i for i in range(n) if 1.0 < sig[i] < 50.0]
    assert noise_calls == churned
    for i in range(n):
        expect = float(sig[i]) * (1 + eta) if i in churned else float(sig[i])
        assert seen[i] == pytest.approx(expect)


def test_solver_dtype_float64_by_default_and_input_option(gaussian):
    dtypes = []

    def cb(d):
        dtypes.append(d["x"].dtype)

    z = z0_like(dtype=torch.float32)
    out = sample_res(gaussian, 80 * z, SamplerConfig(steps=3).sigmas(), callback=cb)
    assert out.dtype == torch.float32 and set(dtypes) == {torch.float64}
    dtypes.clear()
    sample_res(gaussian, 80 * z, SamplerConfig(steps=3).sigmas(), callback=cb, solver_dtype=None)
    assert set(dtypes) == {torch.float32}


def test_callback_may_replace_state(gaussian):
    sig = SamplerConfig(steps=3).sigmas()
    base = sample_res(gaussian, 80 * z0_like(), sig)
    out = sample_res(gaussian, 80 * z0_like(), sig, callback=lambda d: d["x"] * 0 if d["i"] == 2 else None)
    assert not torch.allclose(base, out)


def test_sampler_is_differentiable_everywhere(conv32):
    for solver in SOLVERS:
        for mode in ("default", "learnable_step_noise", "fresh_noise", "independent_leaves"):
            z = z0_like(dtype=torch.float32).requires_grad_(True)
            out = sampler(conv32, mode, solver=solver)(z)
            assert out.requires_grad and out.shape == z.shape and out.dtype == torch.float32
            (g,) = torch.autograd.grad(out.square().sum(), [z])
            assert torch.isfinite(g).all() and g.abs().max() > 0


@pytest.mark.parametrize("kwargs,needle", [
    ({"solver": "3rk"}, "'3rk'"), ({"steps": 0}, "steps"), ({"steps": 2.5}, "2.5"),
    ({"sigma_min": 80.0, "sigma_max": 80.0}, "sigma_min=80.0"), ({"rho": 0.0}, "rho"),
    ({"rho": -1.0}, "-1.0"), ({"sigma_min": float("nan")}, "nan"), ({"s_churn": -1.0}, "s_churn"),
    ({"s_min": 5.0, "s_max": 1.0}, "s_min"), ({"solver_dtype": "half"}, "half"),
])
def test_config_rejects_bad_values_naming_them(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        SamplerConfig(**kwargs).validate()


def test_unknown_mode_and_denoiser_rejected(gaussian):
    with pytest.raises(ConfigError, match="'sometimes'"):
        sampler(gaussian, "sometimes")
    with pytest.raises(ConfigError, match="'unet9000'"):
        build_denoiser("unet9000")


def test_wrong_shape_or_non_tensor_denoiser_output_is_named():
    with pytest.raises(DenoiserError, match=r"shape \(2, 1, 4, 4\).*\(2, 1, 8, 8\)"):
        sampler(lambda x, s: x[..., :4, :4])(z0_like())
    with pytest.raises(DenoiserError, match="returned NoneType"):
        sampler(lambda x, s: None)(z0_like())
    with pytest.raises(DenoiserError, match="returned dict"):
        sampler(lambda x, s: {"x": x})(z0_like())


def test_output_objects_are_unpacked_and_probed():
    """diffusers-style results: an object with .sample, or a (sample,) tuple (return_dict=False)."""
    from types import SimpleNamespace

    import gradcheck

    den = GaussianDenoiser(0.1, 0.5)
    plain = sampler(den)(z0_like())
    for wrap in (lambda x, s: SimpleNamespace(sample=den(x, s)), lambda x, s: (den(x, s),)):
        torch.testing.assert_close(sampler(wrap)(z0_like()), plain, rtol=0, atol=0)
        rep = gradcheck.diagnose(sampler(wrap), z0_like(), numeric=False, optim_steps=0)
        assert rep.passed and all(p.reached for p in rep.of_kind("denoiser_out"))


def test_edm_preconditioning_limits(conv64):
    x = z0_like()
    # at tiny sigma c_skip -> 1 and c_out -> 0: D(x) ~ x
    torch.testing.assert_close(conv64(x, 1e-6), x, rtol=0, atol=1e-5)
