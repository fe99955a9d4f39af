"""Locator details and the per-probe distinctions: vanishing, exploding, non-finite, dtypes."""
from __future__ import annotations

import pytest
import torch

import gradcheck
from gradcheck.sampling import GaussianDenoiser, SamplerConfig, sample_res

from .conftest import CallFault, ResetCalls, sampler, z0_like

DEN = GaussianDenoiser(0.1, 0.5)


def _with_callback(cb, solver="1euler", steps=4):
    sig = SamplerConfig(solver=solver, steps=steps).sigmas()

    def sample(z):
        return sample_res(DEN, 80.0 * gradcheck.probe(z, "z0", kind="z0"), sig, solver=solver,
                          callback=cb)
    return sample


def test_vanishing_gradient_is_flagged_not_passed():
    def leak(d):  # truncated backprop with a tiny leak: the value is unchanged
        if d["i"] == 1:
            return d["x"] * 1e-10 + d["x"].detach() * (1 - 1e-10)
    rep = gradcheck.diagnose(_with_callback(leak), z0_like(), target=z0_like(seed=5))
    f = rep.check("grad_scale")
    assert not f.passed and "vanishing at" in f.message and "threshold 1e-08" in f.message
    assert rep.probe("z0").status == "ok"  # it is there, just far too small


def test_exploding_gradient_is_flagged():
    def blow(d):
        if d["i"] == 2:
            return d["x"] * 1e5 - d["x"].detach() * (1e5 - 1)
    rep = gradcheck.diagnose(_with_callback(blow), z0_like(), target=z0_like(seed=5))
    f = rep.check("grad_scale")
    assert not f.passed and "exploding between" in f.message and "grows 1e+05x" in f.message


def test_thresholds_are_configurable():
    def blow(d):
        if d["i"] == 2:
            return d["x"] * 1e5 - d["x"].detach() * (1e5 - 1)
    rep = gradcheck.diagnose(_with_callback(blow), z0_like(), target=z0_like(seed=5),
                             exploding_ratio=1e6)
    assert rep.check("grad_scale").passed


def test_non_finite_backward_names_the_op_and_step(conv32):
    smp = ResetCalls(CallFault(DEN, at=2, fault="nan_grad"), sampler(DEN))
    rep = gradcheck.diagnose(smp, z0_like())
    p = rep.locator.primary
    assert p.kind == "nonfinite" and p.cause == "nonfinite_backward" and p.step == 2
    assert "_GradScaleBackward" in p.op and p.location.startswith("tests/conftest.py:")


def test_wrong_custom_backward_has_no_forward_cause_and_is_found_by_its_own_vjp():
    smp = ResetCalls(CallFault(DEN, at=1, fault="scale_grad", factor=3.0), sampler(DEN))
    rep = gradcheck.diagnose(smp, z0_like())
    p = rep.locator.primary
    assert p.cause == "custom_backward" and p.step == 1 and p.op == "_GradScale.backward"
    assert "custom autograd.Function's backward" in rep.check("numeric_directional").message


def test_a_gradient_hook_that_rescales_is_located_numerically_and_named():
    calls = {"n": 0}

    def den(x, sigma):  # a gradient hook that scales what flows back: no Function to check
        calls["n"] += 1
        out = DEN(x, sigma)
        if calls["n"] % 5 == 2 and out.requires_grad:
            out.register_hook(lambda g: g * 3.0)  # THE-HOOK
        return out

    def sample(z):
        calls["n"] = 0
        return sampler(den)(z)
    sample.mode = "default"
    rep = gradcheck.diagnose(sample, z0_like())
    p, b = rep.locator.primary, rep.locator.bisection
    assert rep.locator.vjp_checks == 0 and p.cause == "gradient_hook" and p.step == 1, p
    assert p.location == f"tests/test_locate.py:{_line_of('# THE-HOOK')}"
    assert "changes the gradient it is given (by 2.00e+00 relative" in p.detail
    assert (b.wrong_at, b.right_at, b.step) == ("D_in[1]", "D_out[1]", 1)
    assert "gradient hook changes the gradient" in rep.check("numeric_directional").message
    # the cost is bounded and reported: one forward+backward, log2(probes) measurements of
    # 2 (agree) or 6 (disagree) forward passes
    import math

    assert b.backwards == 1 and len(b.checks) <= math.ceil(math.log2(b.probes + 1)) + 1
    assert b.forwards <= 6 * len(b.checks) and f"{b.forwards} forward pass(es)" in p.detail


def _line_of(needle: str) -> int:
    import inspect
    import sys

    src = inspect.getsource(sys.modules[__name__]).splitlines()
    return next(i for i, line in enumerate(src, 1) if needle in line and "_line_of" not in line)


@pytest.mark.parametrize("fault, cause, op", [
    ("hook_scale", "gradient_hook", "gradient hook"),
    ("module_hook", "module_hook", "module backward hook on _Call"),
    ("ckpt_drift", "wrong_vjp", "checkpointed region")])
@pytest.mark.parametrize("at, dtype", [(1, torch.float64), (3, torch.float64),
                                       (2, torch.float32), (3, torch.float32)])
def test_wrong_gradients_without_a_custom_function_are_bisected_to_their_step(
        fault, cause, op, at, dtype):
    smp = ResetCalls(CallFault(DEN, at=at, fault=fault, factor=1.3), sampler(DEN, steps=4))
    rep = gradcheck.diagnose(smp, z0_like(dtype=dtype), optim_steps=0)
    p, b = rep.locator.primary, rep.locator.bisection
    assert not rep.passed and p.cause == cause and p.step == at and p.op.startswith(op), p
    assert p.location.startswith("tests/conftest.py:")
    assert (b.wrong_at, b.right_at) == (f"D_in[{at}]", f"D_out[{at}]")
    assert 0.1 < b.rel_error < 0.4  # the 30% the fault puts in, as measured at D_in


def test_a_hook_that_only_watches_is_no_fault_and_costs_nothing():
    seen = []

    def den(x, sigma):
        out = DEN(x, sigma)
        if out.requires_grad:
            out.register_hook(lambda g: seen.append(float(g.norm())))  # returns None
        return out

    rep = gradcheck.diagnose(sampler(den), z0_like(), locate="always")
    assert rep.passed and rep.locator.primary is None and rep.locator.bisection is None
    assert seen


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-5), (torch.float32, 2e-2),
                                        (torch.bfloat16, 1e-1)])
def test_numeric_check_is_dtype_aware(dtype, rtol):
    for checks, rows in (("default", 1), ("full", 3)):
        # default: the precision's preferred step agrees, so the sweep stops there; full: all
        rep = gradcheck.diagnose(sampler(DEN, "learnable_step_noise"), z0_like(dtype=dtype),
                                 checks=checks, optim_steps=0)
        n = rep.numeric
        assert n.dtype == str(dtype).replace("torch.", "") and n.rtol == rtol
        assert len(n.sweep) == rows and n.eps in [row["eps"] for row in n.sweep]
        assert rep.check("numeric_directional").passed, rep.check("numeric_directional").message


def test_locate_never_and_always():
    smp = _with_callback(lambda d: d["x"].detach() if d["i"] == 1 else None)
    assert gradcheck.diagnose(smp, z0_like(), locate="never").locator is None
    rep = gradcheck.diagnose(sampler(DEN), z0_like(), locate="always")
    assert rep.locator.ran and rep.locator.primary is None and rep.passed
    with pytest.raises(gradcheck.ConfigError, match="'sometimes'"):
        gradcheck.diagnose(sampler(DEN), z0_like(), locate="sometimes")


def test_locator_result_round_trips_through_json():
    from gradcheck.records import FlowReport

    smp = _with_callback(lambda d: d["x"].detach() if d["i"] == 1 else None)
    rep = gradcheck.diagnose(smp, z0_like())
    back = FlowReport.from_dict(rep.to_dict())
    assert back.locator.primary == rep.locator.primary
    from gradcheck.checks import run_checks
    assert [f.message for f in run_checks(back)] == [f.message for f in rep.checks]


def test_capture_graph_off_skips_the_walk_but_not_the_checks():
    smp = sampler(DEN, "independent_leaves")
    on = gradcheck.diagnose(smp, z0_like())
    off = gradcheck.diagnose(smp, z0_like(), capture_graph=False)
    assert off.passed and off.graph.edges == [] and "capture_graph=False" in off.graph.raw_skipped
    assert on.graph.edges
    torch.testing.assert_close(off.handles["z0_grad"], on.handles["z0_grad"])
    assert [p.norm for p in off.probes] == pytest.approx([p.norm for p in on.probes])


# -- grad mode switched off by a call -------------------------------------------------------------

def _line_of(needle: str) -> int:
    import pathlib

    lines = pathlib.Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text and "_line_of" not in text)


class _SwitchesGradOff:
    """A sampler whose denoiser switches grad mode off at its call ``at`` (step ``at`` of 1euler)
    in one of three ways, and switches it back on after the run (so only the locator sees it)."""

    mode = "default"

    def __init__(self, how: str, at: int = 2) -> None:
        self.how, self.at = how, at

    def __call__(self, z):
        calls = {"n": 0}

        def den(x, sigma):
            k = calls["n"]
            calls["n"] += 1
            if k == self.at:
                if self.how == "call":
                    torch.set_grad_enabled(False)  # GRAD-OFF-CALL
                elif self.how == "enter":
                    torch.no_grad().__enter__()  # GRAD-OFF-ENTER
                else:
                    with torch.no_grad():  # GRAD-OFF-WITH
                        return DEN(x, sigma)
            return DEN(x, sigma)

        try:
            return sampler(den, solver="1euler", steps=4)(z)
        finally:
            torch.set_grad_enabled(True)


@pytest.mark.parametrize("how, needle, api", [
    ("call", "# GRAD-OFF-CALL", "torch.set_grad_enabled(False)"),
    ("enter", "# GRAD-OFF-ENTER", "torch.no_grad().__enter__()"),
])
def test_a_call_that_switches_grad_mode_off_is_named_with_its_line_and_step(how, needle, api):
    rep = gradcheck.diagnose(_SwitchesGradOff(how), z0_like(), numeric=False, optim_steps=0)
    p = rep.locator.primary
    assert not rep.passed and p.cause == "grad_mode_off" and p.step == 2
    assert f"switched off by {api} at " in p.detail
    assert p.detail.split(" at ")[1].startswith(f"tests/test_locate.py:{_line_of(needle)}")
    assert "(step 2)" in p.detail and "stays off" in p.detail
    assert p.location is not None  # and the first op that lost the gradient, with its own line
    assert "grad mode switched off by a call" in p.describe()


def test_a_no_grad_block_is_a_region_named_by_its_with_line():
    rep = gradcheck.diagnose(_SwitchesGradOff("with"), z0_like(), numeric=False, optim_steps=0)
    p = rep.locator.primary
    assert p.cause == "no_grad" and p.step == 2
    assert p.detail == f"inside `with torch.no_grad():` at tests/test_locate.py:" \
                       f"{_line_of('# GRAD-OFF-WITH')}"


def test_grad_mode_already_off_when_the_diagnosis_starts_is_said():
    gradcheck.watch_grad_mode()  # (the pytest plugin installed it already: idempotent)
    with torch.no_grad():  # DIAGNOSED-INSIDE
        rep = gradcheck.diagnose(sampler(DEN, steps=2), z0_like(), numeric=False, optim_steps=0)
    p = rep.locator.primary
    assert not rep.passed and p.cause == "no_grad"
    assert p.detail == ("grad mode was off when the sampler was called: the diagnosis ran inside "
                        f"`with torch.no_grad():` at tests/test_locate.py:"
                        f"{_line_of('# DIAGNOSED-INSIDE')}")


def test_a_module_that_switches_grad_off_at_import_is_named_with_its_line(tmp_path, monkeypatch):
    (tmp_path / "grad_off_at_import.py").write_text(
        "import torch\n\n"
        "torch.set_grad_enabled(False)  # a loader's habit\n\n"
        "def factory():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # what --path does
    from gradcheck.runner import import_object

    try:
        import_object("grad_off_at_import:factory", "sampler")  # as gradcheck run does
        assert not torch.is_grad_enabled()
        rep = gradcheck.diagnose(sampler(DEN, steps=2), z0_like(), numeric=False,
                                 optim_steps=0)
    finally:
        torch.set_grad_enabled(True)
        import sys

        sys.modules.pop("grad_off_at_import", None)
    p = rep.locator.primary
    assert not rep.passed and p.cause == "grad_mode_off", p.describe()
    assert "switched off by torch.set_grad_enabled(False) at " in p.detail
    assert "grad_off_at_import.py:3" in p.detail and "never back on" in p.detail


# -- a stationary loss, or a dead path? ---------------------------------------------------------


@pytest.mark.parametrize("kill", [
    lambda x: x.clamp(min=1e9),  # saturated: the output no longer depends on z0
    lambda x: torch.where(x > 1e12, x, torch.full_like(x, 3.0)),  # the z0 branch masked out
], ids=["saturated_clamp", "masked_where"])
def test_a_dead_path_is_located_where_the_gradient_becomes_zero_not_at_the_loss(kill):
    def cb(d):
        if d["i"] == 0:
            return kill(d["x"])  # step 0

    # the default loss: the output equals the baseline (both constant), so dL/d(output) = 0
    rep = gradcheck.diagnose(_with_callback(cb), z0_like())
    assert rep.path_probe is not None and rep.path_probe.dead
    p = rep.locator.primary
    assert p.kind == "zero" and p.step == 0 and "mse_loss" not in p.op, p.describe()
    assert p.op.startswith(("clamp", "where")), p.op
    f = rep.check("loss_not_stationary")
    assert not f.passed and "the output does not depend on z0" in f.message
    assert "timings" and "path_probe_s" in rep.timings


def test_a_stationary_loss_on_a_live_path_says_the_path_is_alive():
    smp = _with_callback(lambda d: None)
    out = smp(z0_like()).detach()  # the target is the output itself: the loss is at its minimum
    rep = gradcheck.diagnose(smp, z0_like(), target=out, numeric=False, optim_steps=0)
    pp = rep.path_probe
    assert pp is not None and not pp.dead and pp.z0_norm > 0
    f = rep.check("loss_not_stationary")
    assert not f.passed and "the path itself is alive" in f.message
    assert "draw the baseline from different noise" in f.message
    # and the step picture does not call the steps cut off: the loss is flat
    msg = rep.check("grad_reaches_every_step").message
    assert "the loss is stationary" in msg and "cut off" not in msg, msg


def test_a_healthy_run_pays_no_path_probe():
    rep = gradcheck.diagnose(_with_callback(lambda d: None), z0_like())
    assert rep.path_probe is None and "path_probe_s" not in rep.timings


# -- a proven bias is an error ----------------------------------------------------------------------

def _float32_sampler(edit, at: int = 3):
    """A float32 RES run (where the numeric check is weak) with ``edit`` applied to the state of
    step ``at``."""
    from gradcheck.sampling import build_denoiser

    den = build_denoiser("conv", dtype=torch.float32)
    sig = SamplerConfig(solver="2ab", steps=6).sigmas()

    def sample(z):
        def cb(d):
            if d["i"] == at:
                return edit(d["x"])
        return sample_res(den, 80.0 * gradcheck.probe(z, "z0", kind="z0"), sig, solver="2ab",
                          callback=cb)
    sample.mode = "default"
    return sample


def _mix_data(x):
    return x + x.data * 0.1  # BIAS-DATA


def _write_data(x):
    y = x * 1.0
    y.data.clamp_(-1.0, 1.0)  # BIAS-WRITE
    return y


@pytest.mark.parametrize("edit, needle, cause", [
    (lambda x: x * float(x.std()), "x * float(x.std())", "python_roundtrip"),
    (lambda x: x / (x.std().item() + 1e-3) * 2.0, "x.std().item() + 1e-3", "python_roundtrip"),
    (lambda x: x + torch.tensor(x.tolist(), dtype=x.dtype) * 1e-3, "torch.tensor(x.tolist()",
     "python_roundtrip"),
    (_mix_data, "# BIAS-DATA", "data_read"),
    (_write_data, "# BIAS-WRITE", "data_write"),
], ids=["float", "item_through_arithmetic", "tolist", "data_read_mixed_in", "data_write"])
def test_a_proven_bias_fails_the_run_with_its_step_and_line(edit, needle, cause):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = gradcheck.diagnose(_float32_sampler(edit), z0_like(dtype=torch.float32))
    f = rep.check("no_proven_bias")
    assert not rep.passed and not f.passed and f.step == 3, f.message
    b = rep.locator.bias
    assert b.kind == "bias" and b.cause == cause and b.step == 3
    assert b.location == f"tests/test_locate.py:{_line_of(needle)}", b.location
    assert rep.locator.primary is b  # and it is what the report says first


def test_values_that_only_steer_control_flow_or_logging_are_reported_not_failed(capsys):
    def steer(x):
        if float(x.std()) > 1e9:  # never: control flow only
            return x * 2
        print(f"std {x.std().item():.3f}")  # logging only
        return x

    rep = gradcheck.diagnose(_float32_sampler(steer), z0_like(dtype=torch.float32))
    f = rep.check("no_proven_bias")
    assert rep.passed and f.passed and f.level == "error"
    assert "2 value(s) left it only to steer control flow or logging" in f.message
    assert "reason" and "numeric check alone cannot prove" in rep.locator.reason


def test_float64_runs_with_the_numeric_check_pay_no_bias_scan(gaussian):
    rep = gradcheck.diagnose(sampler(gaussian, steps=2), z0_like())
    assert rep.locator is None and rep.check("no_proven_bias").level == "info"


# -- a wrong custom backward: located by its own vector-Jacobian product -------------------------

class _Twice(torch.autograd.Function):
    """A correct custom Function (forward 2x, backward 2g)."""

    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, g):
        return g * 2.0


@pytest.mark.parametrize("at, dtype", [(0, torch.float64), (2, torch.float64), (3, torch.float32)])
def test_a_wrong_custom_backward_is_named_with_its_step_class_and_line(at, dtype):
    fault = CallFault(DEN, at=at, fault="scale_grad", factor=1.3)
    smp = ResetCalls(fault, sampler(DEN, steps=4))
    rep = gradcheck.diagnose(smp, z0_like(dtype=dtype), optim_steps=0)
    p = rep.locator.primary
    assert not rep.passed and p.cause == "custom_backward" and p.step == at, p
    assert p.op == "_GradScale.backward" and p.location.startswith("tests/conftest.py:")
    import inspect

    from .conftest import _GradScale

    assert p.location.endswith(f":{inspect.getsourcelines(_GradScale.backward)[1]}")
    assert "relative error 2.3" in p.detail
    assert rep.locator.vjp_checks >= 1
    assert "custom autograd.Function's backward does not match its forward" in \
        rep.check("numeric_directional").message


def test_a_correct_custom_function_is_not_blamed_for_another_break():
    calls = {"n": 0}

    def den(x, sigma):
        calls["n"] += 1
        out = _Twice.apply(DEN(x, sigma)) / 2.0
        return out.detach() if calls["n"] % 5 == 3 else out  # the real break: a detach

    def sample(z):
        calls["n"] = 0
        return sampler(den, steps=4)(z)
    sample.mode = "default"
    rep = gradcheck.diagnose(sample, z0_like(), optim_steps=0)
    p = rep.locator.primary
    assert p.cause == "detach", p.describe()
    assert not [e for e in rep.locator.events if e.cause == "custom_backward"]


# -- float() through Python arithmetic: asked by intervention ----------------------------------------

def _float_at_call(use):
    calls = {"n": 0}

    def den(x, sigma):
        calls["n"] += 1
        out = DEN(x, sigma)
        return use(out) if calls["n"] == 3 else out

    def sample(z):
        calls["n"] = 0
        return sampler(den)(z)
    sample.mode = "default"
    return sample


def _tiny_scale(out):
    return out * (1.0 + 1e-4 * float(out.abs().mean()))  # FLOAT-ARITH


def _steer(out):
    return out * 2 if float(out.abs().mean()) > 1e9 else out


def test_a_float_through_python_arithmetic_is_a_proven_bias_even_when_the_numeric_check_passes():
    rep = gradcheck.diagnose(_float_at_call(_tiny_scale), z0_like(dtype=torch.float32),
                             shadow=False, optim_steps=0)
    assert rep.check("numeric_directional").passed  # the bias is far too small to see
    f = rep.check("no_proven_bias")
    assert not f.passed and not rep.passed and f.step == 2, f.message
    assert f"tests/test_locate.py:{_line_of('# FLOAT-ARITH')}" in f.message
    assert "nudging it by +-0.01 relative moves the loss" in f.message


def test_a_float_that_only_steers_control_flow_is_reported_not_failed():
    rep = gradcheck.diagnose(_float_at_call(_steer), z0_like(dtype=torch.float32), optim_steps=0)
    f = rep.check("no_proven_bias")
    assert rep.passed and f.passed and "only to steer control flow or logging" in f.message


# -- every grad-disabling site on the path, outermost first ---------------------------------------

def _den_in_no_grad_block(x, sigma):
    with torch.no_grad():  # SITE-WITH
        return DEN(x, sigma)


class _NestedNoGrad:
    """Cosmos' structure: the entry point and its implementation both decorated."""

    mode = "default"

    @torch.no_grad()  # SITE-OUTER
    def forward(self, z):
        return self._forward_impl(z)

    @torch.no_grad()  # SITE-INNER
    def _forward_impl(self, z):
        return sampler(_den_in_no_grad_block, steps=2)(z)

    def __call__(self, z):
        return self.forward(z)


def test_every_grad_disabling_site_is_named_outermost_first():
    rep = gradcheck.diagnose(_NestedNoGrad(), z0_like(), numeric=False, optim_steps=0)
    p = rep.locator.primary
    here = "tests/test_locate.py"
    assert p.sites == [
        f"@torch.no_grad() on {__name__}._NestedNoGrad.forward ({here}:{_line_of('# SITE-OUTER')})",
        f"@torch.no_grad() on {__name__}._NestedNoGrad._forward_impl "
        f"({here}:{_line_of('# SITE-INNER')})"], p.sites
    assert "because of 2 sites, outermost first" in p.detail and "every one must change" in \
        p.detail
    # a with block inside both: three sites where the denoiser runs
    inner = [e for e in rep.locator.events if e.sites and len(e.sites) == 3]
    assert not inner or inner[0].sites[2].startswith("`with torch.no_grad():` in "
                                                     "_den_in_no_grad_block")


def test_a_with_block_is_a_site_with_its_line():
    from gradcheck.torch_internals import grad_off_sites

    with torch.no_grad():  # SITE-HERE
        sites = grad_off_sites()
    assert sites == [{"api": "with torch.no_grad():", "function":
                      "test_a_with_block_is_a_site_with_its_line",
                      "location": f"tests/test_locate.py:{_line_of('# SITE-HERE')}"}]
