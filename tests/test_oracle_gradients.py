"""dL/dz0 against closed forms (Gaussian data) and torch.autograd.gradcheck in float64."""
from __future__ import annotations

import math

import pytest
import torch

import gradcheck
from gradcheck.sampling import NOISE_MODES, SOLVERS, GaussianDenoiser, SamplerConfig, phi1, phi2

from .conftest import sampler, z0_like

MU, S = 0.1, 0.5


def a(sigma: float) -> float:
    """The Gaussian denoiser's gain: D(x) - mu = a(sigma) (x - mu)."""
    return S**2 / (S**2 + sigma**2)


def gain_1euler(sig: list[float]) -> float:
    """d output / d z0 for 1euler, closed form: sigma_max a(s_N) prod_i (r_i + (1 - r_i) a(s_i))."""
    k = 1.0
    for s, t in zip(sig, sig[1:]):
        r = t / s
        k *= r + (1 - r) * a(s)
    return sig[0] * a(sig[-1]) * k


def gain_2ab(sig: list[float]) -> float:
    """The same for 2ab, by the scalar recurrence of the update formula (written independently
    of the library: y = x - mu evolves linearly with scalar coefficients)."""
    y, prev = 1.0, None  # y_i as a multiple of y_0
    for s, t in zip(sig, sig[1:]):
        h = math.log(s / t)
        d = a(s) * y
        if prev is None:
            y_next = (t / s) * y + (1 - t / s) * d
        else:
            d_prev, s_prev = prev
            r = h / math.log(s_prev / s)
            p1 = math.expm1(-h) / -h
            p2 = (p1 - 1) / -h
            y_next = math.exp(-h) * y + h * ((p1 + r * p2) * d - r * p2 * d_prev)
        prev = (d, s)
        y = y_next
    return sig[0] * a(sig[-1]) * y


@pytest.mark.parametrize("solver,gain", [("1euler", gain_1euler), ("2ab", gain_2ab)])
@pytest.mark.parametrize("steps", [1, 4, 12])
def test_grad_z0_matches_closed_form(solver, gain, steps):
    den = GaussianDenoiser(MU, S)
    cfg = SamplerConfig(solver=solver, steps=steps)
    z = z0_like().requires_grad_(True)
    target = z0_like(seed=7)
    out = sampler(den, solver=solver, steps=steps)(z)
    loss = torch.nn.functional.mse_loss(out, target)
    (g,) = torch.autograd.grad(loss, [z])
    k = gain(cfg.sigmas().tolist())
    expect = 2.0 / z.numel() * (out.detach() - target) * k
    torch.testing.assert_close(g, expect, rtol=1e-12, atol=1e-15)


def test_grad_converges_to_the_exact_ode_jacobian():
    # exact: out - mu = a(smin) sqrt(S^2 + smin^2)/sqrt(S^2 + smax^2) (smax z0 - mu)
    exact = 80.0 * a(0.002) * math.sqrt(S**2 + 0.002**2) / math.sqrt(S**2 + 80.0**2)
    errs = []
    for n in (35, 140):
        k = gain_2ab(SamplerConfig(steps=n).sigmas().tolist())
        errs.append(abs(k - exact) / exact)
    assert errs[1] < errs[0] / 8 and errs[1] < 2e-3


def test_diagnose_reports_the_closed_form_gradient_norm():
    den = GaussianDenoiser(MU, S)
    target = z0_like(seed=7)
    z0 = z0_like()
    rep = gradcheck.diagnose(sampler(den, solver="1euler"), z0, target=target)
    out = rep.handles["output"]
    k = gain_1euler(SamplerConfig(steps=4).sigmas().tolist())
    expect = (2.0 / z0.numel() * (out - target) * k).norm().item()
    assert rep.probe("z0").norm == pytest.approx(expect, rel=1e-10)
    assert rep.check("numeric_directional").passed
    assert rep.numeric.rel_error < 1e-6


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("mode", NOISE_MODES)
def test_torch_autograd_gradcheck_float64(solver, mode, conv64):
    smp = sampler(conv64, mode, solver=solver, steps=2 if solver != "2mid" else 4)
    z = z0_like(shape=(1, 1, 4, 4)).requires_grad_(True)
    if mode != "independent_leaves":
        assert torch.autograd.gradcheck(smp, (z,), eps=1e-6, atol=1e-6, rtol=1e-5)
        return
    smp(z)  # creates the leaves
    keys = sorted(smp._noise_source.leaf_noise.leaves)
    leaves = [smp._noise_source.leaf_noise.leaves[k].detach().clone().requires_grad_(True) for k in keys]

    def f(z, *ls):
        smp._noise_source.leaf_noise.leaves = dict(zip(keys, ls))
        return smp(z)

    assert torch.autograd.gradcheck(f, (z, *leaves), eps=1e-6, atol=1e-6, rtol=1e-5)
