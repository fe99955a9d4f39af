"""The pytest plugin (entry point pytest11 'gradcheck'), end to end with pytester."""
from __future__ import annotations

import json
import re

TEST_FILE = '''
import torch
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser
from gradcheck.testing import assert_gradient_flows

den = build_denoiser("gaussian", dtype=torch.float64)
z0 = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def healthy(z):
    return ResSampler(den, SamplerConfig(steps=3))(z)


def broken(z):
    calls = {"n": 0}

    def d(x, s):
        calls["n"] += 1
        return den(x, s).detach() if calls["n"] == 2 else den(x, s)

    return ResSampler(d, SamplerConfig(steps=3))(z)


def test_healthy(gradcheck_trace):
    rep = gradcheck_trace.diagnose(healthy, z0, numeric=False, optim_steps=0)
    assert rep.passed
    gradcheck_trace.assert_gradient_flows(healthy, z0, to="every_step")
    assert len(gradcheck_trace.reports) == 2 and gradcheck_trace.last is gradcheck_trace.reports[-1]


def test_broken():
    assert_gradient_flows(broken, z0, to="every_step")
'''


def test_plugin_passes_healthy_and_fails_broken_with_the_located_cause(pytester):
    pytester.makepyfile(test_samplers=TEST_FILE)
    res = pytester.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "gradient does not reach D_in[1]" in out
    assert "cause: .detach()" in out and "test_samplers.py:" in out
    assert "hint:" in out
    # __tracebackhide__: the user's assert line is what pytest points at, not gradcheck's
    assert re.search(r"^>\s+assert_gradient_flows\(broken, z0", out, re.M)
    assert "gradcheck/testing.py" not in out
    # a failing test that made diagnoses gets a gradcheck section with the summary
    assert "gradcheck" in out and "mode custom: FAIL" in out


def test_gradcheck_report_writes_html_per_diagnosis(pytester, tmp_path):
    pytester.makepyfile(test_samplers=TEST_FILE)
    out = tmp_path / "reports"
    res = pytester.runpytest("-p", "no:cacheprovider", f"--gradcheck-report={out}")
    res.assert_outcomes(passed=1, failed=1)
    assert f"gradcheck: wrote 3 report(s) under {out}" in res.stdout.str()
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["test_samplers.py_test_broken", "test_samplers.py_test_healthy",
                    "test_samplers.py_test_healthy-2"]
    html = (out / dirs[0] / "index.html").read_text()
    assert "test_samplers.py::test_broken" in html and "FAIL" in html
    data = json.loads((out / dirs[1] / "report.json").read_text())
    assert data["config"]["test"] == "test_samplers.py::test_healthy"
    assert list(data["modes"]) == ["custom"] and data["modes"]["custom"]["passed"]


def test_plugin_loads_without_importing_torch(pytester):
    pytester.makepyfile(test_plain='''
import sys

def test_no_torch(request):
    assert request.config.pluginmanager.hasplugin("gradcheck")
    assert request.config.getoption("gradcheck_report") is None
    assert "torch" not in sys.modules, "the gradcheck plugin imported torch"
    assert "matplotlib" not in sys.modules
''')
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)


def test_the_plugin_keeps_no_tensor_of_a_finished_test_alive(pytester):
    # a CUDA z0, its gradient, the output and the loss closure would otherwise stay alive for
    # the whole session: after the test, only the plain record is kept
    pytester.makepyfile(test_leak='''
import gc, weakref
import torch
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser

den = build_denoiser("gaussian", dtype=torch.float64)
REFS = []


def test_diagnose(gradcheck_trace):
    rep = gradcheck_trace.diagnose(ResSampler(den, SamplerConfig(steps=2)),
                                   torch.randn(2, 1, 8, 8, dtype=torch.float64))
    REFS.extend(weakref.ref(rep.handles[k]) for k in ("z0", "z0_grad", "output"))
    assert rep.passed


def test_nothing_of_it_is_alive(request):
    gc.collect()
    assert REFS and all(r() is None for r in REFS)
''')
    # in a subprocess: in-process, this very test's recorder would (rightly) see the inner
    # diagnoses too, and keep them for this test's own summary
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=2)
