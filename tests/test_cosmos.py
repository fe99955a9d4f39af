"""The Cosmos convention: an unmodified Cosmos-style Sampler (tests/cosmos_replica.py: both entry
points @torch.no_grad(), a float64 wrapper, module-level helpers, fori_loop, callback_fns with
**locals(), churn from torch.randn_like, the final clean call) diagnosed through
adapters.cosmos: as-is it fails naming both decorators; with allow_grad it passes with the
gradient of the undecorated pieces run by hand."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradcheck
from gradcheck import adapters
from gradcheck.errors import ConfigError
from gradcheck.sampling import GaussianDenoiser, SamplerConfig, sample_res

from . import cosmos_replica as cr

DEN = GaussianDenoiser(0.1, 0.5)
ROOT = Path(__file__).resolve().parent.parent
SOLVERS = [("2ab", 4), ("2mid", 8), ("1euler", 4)]


def _z0(dtype=torch.float64, seed=1):
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("solver, steps", SOLVERS)
def test_the_replica_computes_the_res_sampler(solver, steps):
    z0 = _z0()
    out = cr.Sampler()(DEN, 80.0 * z0, num_steps=steps, solver_option=solver)
    ref = sample_res(DEN, 80.0 * z0, SamplerConfig(solver=solver, steps=steps).sigmas(),
                     solver=solver)  # with the final clean call, as the original
    assert float((out - ref).abs().max()) < 1e-12


@pytest.mark.parametrize("solver, steps", SOLVERS)
def test_as_is_the_diagnosis_fails_naming_both_decorators(solver, steps):
    fn = adapters.cosmos(cr.Sampler(), DEN, num_steps=steps, solver_option=solver)
    rep = gradcheck.diagnose(fn, _z0(), numeric=False, optim_steps=0)
    p = rep.locator.primary
    assert not rep.passed and p.cause == "decorated_no_grad"
    assert [s.split(" (")[0] for s in p.sites] == [
        "@torch.no_grad() on tests.cosmos_replica.Sampler.forward",
        "@torch.no_grad() on tests.cosmos_replica.Sampler._forward_impl"]
    assert "every one must change" in p.detail


@pytest.mark.parametrize("solver, steps", SOLVERS)
def test_with_allow_grad_it_passes_with_the_gradient_of_the_undecorated_pieces(solver, steps):
    z0, target = _z0(), _z0(seed=9)
    fn = adapters.cosmos(cr.Sampler(), DEN, num_steps=steps, solver_option=solver)
    rep = gradcheck.diagnose(fn, z0, target=target, allow_grad=True, optim_steps=1)
    assert rep.passed, [f.message for f in rep.failed]
    assert [s.function for s in rep.allowed_grad] == [
        "tests.cosmos_replica.Sampler.forward", "tests.cosmos_replica.Sampler._forward_impl"]
    z = z0.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(
        cr.undecorated(DEN, 80.0 * z, num_steps=steps, solver_option=solver), target)
    (ref,) = torch.autograd.grad(loss, [z])
    got = rep.handles["z0_grad"]
    assert float((got - ref).norm() / ref.norm()) <= 1e-10
    assert rep.numeric.verdict == "agrees" and rep.numeric.rel_error < 1e-6  # and FD
    # every x0_fn call is a probed step (the final clean call included), the state through
    # the sampler's callback_fns
    outs = rep.of_kind("denoiser_out")  # (2mid: num_steps counts calls, two a step)
    assert len(outs) == steps + 1 and all(p.status == "ok" for p in outs)
    assert any(p.name.endswith("@callback") for p in rep.of_kind("state"))


def test_churn_noise_is_fresh_randomness_at_each_step_and_none_at_s_churn_0():
    fn = adapters.cosmos(cr.Sampler(), DEN, num_steps=4, S_churn=10.0)
    rep = gradcheck.diagnose(fn, _z0(), allow_grad=True, optim_steps=0)
    f = rep.check("fresh_randomness")
    assert rep.passed and f.level == "warning" and f.value == 4, f.message
    assert "randn_like at tests/cosmos_replica.py:" in f.message
    for dtype in (torch.float32, torch.float64):  # S_churn = 0: a draw times 0, no alarm
        fn = adapters.cosmos(cr.Sampler(), DEN, num_steps=4)
        rep = gradcheck.diagnose(fn, _z0(dtype), allow_grad=True, optim_steps=0,
                                 locate="always")
        f = rep.check("fresh_randomness")
        assert rep.passed and f.level == "info" and rep.locator.primary is None, f.message
        assert any("multiplied by zero" in n for n in rep.notes)


def test_unknown_keywords_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown sampler keyword.*steps"):
        adapters.cosmos(cr.Sampler(), DEN, steps=4)


def test_the_command_line_runs_the_cosmos_convention(tmp_path):
    cmd = [sys.executable, "-m", "gradcheck", "run", "--sampler", "tests.cosmos_replica:factory",
           "--convention", "cosmos", "--denoiser", "gaussian", "--steps", "4", "--no-html",
           "--out", str(tmp_path / "o")]
    plain = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    allowed = subprocess.run(cmd + ["--allow-grad"], capture_output=True, text=True, cwd=ROOT,
                             timeout=300)
    assert plain.returncode == 2 and "Sampler._forward_impl" in plain.stdout, plain.stdout[-3000:]
    assert allowed.returncode == 0, allowed.stdout[-3000:] + allowed.stderr[-2000:]
    assert "to make this differentiable, change: @torch.no_grad() on " \
           "tests.cosmos_replica.Sampler.forward" in allowed.stdout
    # both of the seed's modes: in learnable_step_noise the sampler's own churn draws are made
    # z0-derived step noise (S_churn: the step-noise modes' default), each receiving gradient
    assert "mode learnable_step_noise: PASS" in allowed.stdout
    assert "all 4 step noises receive gradient" in allowed.stdout


def test_bad_convention_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    from gradcheck.cli import main

    out = tmp_path / "o"
    assert main(["run", "--convention", "cosmos", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("gradcheck: error: --convention cosmos applies to --sampler (the built-in "
                   "sampler has its own)") and not out.exists()
    # a factory that cannot be called without arguments
    assert main(["run", "--sampler", "tests.cosmos_replica:get_rev_ts", "--convention", "cosmos",
                 "--denoiser", "gaussian", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradcheck: error: --convention cosmos: 'get_rev_ts' must be a factory "
                          "taking no arguments") and len(err.splitlines()) == 1
    assert not out.exists()


# -- the seed's second mode on the real sampler: its churn draws made learnable step noise ------

def test_learnable_churn_makes_every_step_noise_receive_gradient(monkeypatch):
    """noise="learnable": each torch.randn_like churn draw inside the unmodified sampler is a
    seeded orthogonal map of z0, so the gradient reaches z0 through the noise too; the
    step_noise check sees every draw receive gradient. Truth: plain autograd through the
    undecorated sampler with the same maps in place of randn_like."""
    import inspect

    from gradcheck.sampling.noise import LearnableStepNoise

    z0, target = _z0(), _z0(seed=9)
    fn = adapters.cosmos(cr.Sampler(), DEN, num_steps=4, S_churn=10.0, noise="learnable")
    assert fn.mode == "learnable_step_noise"
    rep = gradcheck.diagnose(fn, z0, target=target, allow_grad=True, optim_steps=1)
    assert rep.passed, [f.message for f in rep.failed]
    eps = rep.of_kind("step_noise")
    assert len(eps) == 4 and all(p.status == "ok" and p.norm > 0 for p in eps)
    assert rep.check("step_noise").passed and rep.check("fresh_randomness").level == "info"

    class Undecorated(cr.Sampler):  # the same code without its two @torch.no_grad()
        forward = inspect.unwrap(cr.Sampler.forward)
        _forward_impl = inspect.unwrap(cr.Sampler._forward_impl)

    z = z0.clone().requires_grad_(True)
    maps, count = LearnableStepNoise(z, 0), [0]

    def drawn(x, *a, **k):
        count[0] += 1
        return maps(count[0] - 1, x)
    monkeypatch.setattr(torch, "randn_like", drawn)
    out = Undecorated()(DEN, x_sigma_max=80.0 * z, num_steps=4, S_churn=10.0)
    (ref,) = torch.autograd.grad(torch.nn.functional.mse_loss(out, target), [z])
    assert count[0] == 4
    got = rep.handles["z0_grad"]
    assert float((got - ref).norm() / ref.norm()) <= 1e-10
    # the noise matters: without the maps' gradient (fresh draws) dL/dz0 is another one
    fresh = gradcheck.diagnose(adapters.cosmos(cr.Sampler(), DEN, num_steps=4, S_churn=10.0,
                                               noise="fresh"), z0, target=target,
                               allow_grad=True, optim_steps=0)
    assert float((fresh.handles["z0_grad"] - ref).norm() / ref.norm()) > 1e-3


def test_function_samplers_draws_can_be_made_learnable():
    """adapters.function(noise=...): a hand-written ancestral loop drawing with randn_like."""
    def ancestral(den, z0):
        x = z0 * 10.0
        for s, s_next in [(10.0, 5.0), (5.0, 2.0), (2.0, 0.5)]:
            d = den(x, s)
            x = d + s_next * 0.8 * (x - d) / s + s_next * 0.6 * torch.randn_like(x)
        return x

    z0 = _z0()
    own = gradcheck.diagnose(adapters.function(ancestral, DEN), z0, optim_steps=0)
    assert own.check("fresh_randomness").level == "warning"  # the global RNG's draws
    fn = adapters.function(ancestral, DEN, noise="learnable")
    rep = gradcheck.diagnose(fn, z0, optim_steps=0)
    assert rep.passed and fn.mode == "learnable_step_noise", [f.message for f in rep.failed]
    assert [p.status for p in rep.of_kind("step_noise")] == ["ok"] * 3
    leaves = adapters.function(ancestral, DEN, noise="leaves")
    rep = gradcheck.diagnose(leaves, z0, optim_steps=0)
    assert len(leaves.leaves) == 3 and rep.passed, [f.message for f in rep.failed]


def test_learnable_noise_needs_churn_and_a_known_choice():
    with pytest.raises(ConfigError, match="S_churn > 0"):
        adapters.cosmos(cr.Sampler(), DEN, num_steps=4, noise="learnable")
    with pytest.raises(ConfigError, match="unknown noise 'loud'"):
        adapters.cosmos(cr.Sampler(), DEN, num_steps=4, S_churn=1.0, noise="loud")


# -- a verdict with evidence at bf16: a float64 shadow of the adapted sampler -------------------

def _bf16_x0_fn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 8)).to(torch.bfloat16)

    def x0_fn(x, sigma):  # Cosmos's x0_fn: a closure over the network, in the network's dtype
        p = next(net.parameters())
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return net(x.to(p.dtype)).to(x.dtype) / (1 + s) + x * (s / (1 + s))
    return x0_fn, net


def test_a_bf16_denoiser_gets_a_conclusive_float64_verdict():
    """Through the adapter at bf16 the numeric check alone has no evidence; the float64 shadow
    (the closure's network cast in place and back, its state dict bit-identical afterwards)
    judges at float64's tolerance."""
    x0_fn, net = _bf16_x0_fn()
    before = {k: t.clone() for k, t in net.state_dict().items()}
    fn = adapters.cosmos(cr.Sampler(), x0_fn, num_steps=4)
    rep = gradcheck.diagnose(fn, _z0(torch.bfloat16), allow_grad=True, optim_steps=0)
    sh = rep.numeric_shadow
    assert sh is not None and sh.skipped is None, sh and sh.skipped
    assert sh.dtype == "float64" and sh.verdict == "agrees" and sh.detectable <= 1e-3
    assert rep.passed, [f.message for f in rep.failed]
    assert "a float64 shadow run of the same sampler" in rep.check("numeric_directional").message
    after = net.state_dict()
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(after[k], before[k])
               for k in before)


def test_a_wrong_gradient_in_a_bf16_denoiser_fails_on_float64_evidence():
    """A hook 5% off on every x0_fn call, far below what bf16 finite differences can see: the
    float64 shadow (through the wrapper's closure to the network) catches it."""
    x0_fn, net = _bf16_x0_fn()

    def wrong(x, sigma):
        y = x0_fn(x, sigma)
        if y.requires_grad:
            y.register_hook(lambda g: g * 1.05)
        return y
    z0 = _z0(torch.bfloat16)
    z = z0.clone().requires_grad_(True)  # the truth, by plain autograd through the pieces
    g_ok = torch.autograd.grad(cr.undecorated(x0_fn, 80.0 * z, num_steps=4).float().square()
                               .mean(), z)[0]
    g_bad = torch.autograd.grad(cr.undecorated(wrong, 80.0 * z, num_steps=4).float().square()
                                .mean(), z)[0]
    assert not torch.allclose(g_ok.float(), g_bad.float(), rtol=1e-2)
    fn = adapters.cosmos(cr.Sampler(), wrong, num_steps=4)
    rep = gradcheck.diagnose(fn, z0, allow_grad=True, optim_steps=0)
    sh = rep.numeric_shadow
    assert sh is not None and sh.skipped is None and sh.verdict == "disagrees", sh
    assert not rep.passed and not rep.check("numeric_directional").passed
    assert all(t.dtype == torch.bfloat16 for t in net.state_dict().values())


def test_each_denoiser_call_alone_names_the_step_of_a_wrong_gradient():
    """The hook only at the third x0_fn call: the float64 per-call check (each call's VJP against
    finite differences of that call alone, at the inputs the shadow recorded) names call 2."""
    x0_fn, _ = _bf16_x0_fn()
    count = {"n": 0}

    def wrong_at_2(x, sigma):
        y = x0_fn(x, sigma)
        if y.requires_grad and abs(float(sigma.flatten()[0]) - SIGMA_2) < 1e-6 * SIGMA_2:
            y.register_hook(lambda g: g * 1.05)
        count["n"] += 1
        return y
    SIGMA_2 = float(cr.get_rev_ts(0.002, 80.0, 4, 7)[2])
    fn = adapters.cosmos(cr.Sampler(), wrong_at_2, num_steps=4)
    rep = gradcheck.diagnose(fn, _z0(torch.bfloat16), allow_grad=True, optim_steps=0)
    calls = rep.numeric_shadow.calls
    assert [c["agrees"] for c in calls] == [True, True, False], calls
    msg = rep.check("numeric_directional").message
    assert "call 2 (step 2) has a VJP" in msg and "inside the denoiser" in msg, msg
    p = rep.locator.primary  # the place, not a bisection on bf16 round-off
    assert p.step == 2 and p.op == "denoiser call 2" and rep.locator.bisection is None, p


# -- the seed's application on the user's own sampler: gradcheck optimize --sampler -------------

def test_the_command_line_optimises_z0_through_a_cosmos_convention_sampler(tmp_path):
    import json

    cmd = [sys.executable, "-m", "gradcheck", "optimize", "--sampler",
           "tests.cosmos_replica:factory", "--convention", "cosmos", "--denoiser", "gaussian",
           "--steps", "4", "--iters", "8", "--batch", "2", "--no-progress",
           "--mode", "learnable_step_noise", "--out", str(tmp_path / "o")]
    cut = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    # as-is, its @torch.no_grad() entry points leave nothing to optimise: refused, nothing written
    assert cut.returncode == 1 and "gradient cannot reach z0" in cut.stderr, cut.stderr
    assert not (tmp_path / "o").exists()
    ok = subprocess.run(cmd + ["--allow-grad"], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    rec = json.loads((tmp_path / "o" / "optimize.json").read_text())
    values = rec["result"]["values"]
    assert values[-1] > values[0] and rec["config"]["convention"] == "cosmos"
    assert rec["result"]["mode"] == "learnable_step_noise"
    assert (tmp_path / "o" / "index.html").exists() and "PASS  z0_plausible" in ok.stdout


def test_gradcheck_optimize_is_public_and_takes_any_objective():
    fn = adapters.cosmos(cr.Sampler(), DEN, num_steps=4, S_churn=10.0, noise="learnable")
    res, z = gradcheck.optimize(_allowed(fn), _z0(),
                                objective=lambda out: out.mean(), iters=5, lr=0.05)
    assert res.values[-1] > res.values[0] and z.shape == _z0().shape
    assert {c.name for c in res.checks} >= {"objective_moves", "z0_plausible"}
    res2, _ = gradcheck.optimize(_allowed(fn), _z0(), objective="diverge", iters=4)
    assert res2.values[-1] > res2.values[0] and res2.mode == "learnable_step_noise"


def _allowed(fn):
    from gradcheck.allow import Allowing

    return Allowing(fn)


def test_the_shadow_and_the_per_call_check_are_in_the_cost():
    x0_fn, net = _bf16_x0_fn()
    fn = adapters.cosmos(cr.Sampler(), x0_fn, num_steps=4)
    rep = gradcheck.diagnose(fn, _z0(torch.bfloat16), allow_grad=True, optim_steps=0,
                             checks="full")
    stages = {s.stage: s for s in rep.cost.stages}
    assert stages["shadow"].seconds > 0 and stages["per_call"].seconds > 0
    assert len(rep.numeric_shadow.calls) == 5 and all(c["agrees"] for c in rep.numeric_shadow.calls)
    n = sum(p.numel() for p in net.parameters())
    assert rep.cost.shadow_copy_bytes == 8 * n  # its float64 copy: parameters, 8 bytes each
