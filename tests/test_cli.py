"""The command line: exit codes 0/2/1, one-line errors naming the bad value, determinism, files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gradcheck.report.staging import MANIFEST

from gradcheck.cli import main

FAST = ["--steps", "3", "--denoiser", "gaussian"]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _strip(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for rep in d["modes"].values():
        rep.pop("timings")
        if rep.get("cost"):  # seconds measure the machine; the passes counted stay compared
            for k in ("unit_s", "total_units"):
                rep["cost"].pop(k)
            for stage in rep["cost"]["stages"]:
                stage.pop("seconds"), stage.pop("units")
    return d


def test_run_both_modes_passes_and_writes_report(tmp_path, capsys):
    code, out, err = run_cli(["run", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert "mode default: PASS" in out and "mode learnable_step_noise: PASS" in out
    assert "step   sigma  |g| state" in out
    rec = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(rec["modes"]) == {"default", "learnable_step_noise"}
    assert rec["config"]["denoiser"] == "digits" and rec["config"]["sampler"]["steps"] == 4
    assert [p for p in os.listdir(tmp_path / "r") if p.startswith(".") and p != MANIFEST] == []


@pytest.mark.parametrize("mode", ["default", "learnable_step_noise", "fresh_noise",
                                  "independent_leaves", "all"])
@pytest.mark.parametrize("solver", ["2ab", "2mid", "1euler"])
def test_every_mode_and_solver_from_the_cli(mode, solver, tmp_path, capsys):
    code, out, err = run_cli(["run", "--mode", mode, "--solver", solver, *FAST,
                              "--out", str(tmp_path)], capsys)
    assert code == 0, out + err


def test_35_steps_work(tmp_path, capsys):
    code, out, err = run_cli(["run", "--steps", "35", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    probes = json.loads((tmp_path / "report.json").read_text())["modes"]["default"]["probes"]
    assert len([p for p in probes if p["kind"] == "denoiser_in"]) == 36


def test_json_flag_prints_only_the_record(tmp_path, capsys):
    code, out, err = run_cli(["run", *FAST, "--json", "--out", str(tmp_path)], capsys)
    assert code == 0
    rec = json.loads(out)
    assert rec["passed"] is True and rec == json.loads((tmp_path / "report.json").read_text())


def test_same_seed_gives_the_same_numbers(tmp_path, capsys):
    recs = []
    for k in range(2):
        assert run_cli(["run", "--mode", "all", "--seed", "7", "--steps", "3",
                        "--out", str(tmp_path / str(k))], capsys)[0] == 0
        recs.append(_strip(json.loads((tmp_path / str(k) / "report.json").read_text())))
    assert recs[0] == recs[1]
    run_cli(["run", "--mode", "all", "--seed", "8", "--steps", "3", "--out", str(tmp_path / "2")],
            capsys)
    other = _strip(json.loads((tmp_path / "2" / "report.json").read_text()))
    assert other["modes"]["default"]["loss"] != recs[0]["modes"]["default"]["loss"]


@pytest.mark.parametrize("args,needle", [
    (["--mode", "sideways"], "unknown mode 'sideways'"),
    (["--solver", "rk45"], "unknown solver 'rk45'"),
    (["--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--steps", "-3"], "got -3"),
    (["--sigma-min", "90"], "sigma_min=90.0 >= sigma_max=80.0"),
    (["--rho", "0"], "rho must be a finite number > 0, got 0.0"),
    (["--rho", "-2"], "got -2.0"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--device", "cuda:3"], "'cuda:3'"),
    (["--device", "toaster"], "'toaster'"),
    (["--denoiser", "unet9000"], "unknown built-in denoiser 'unet9000'"),
    (["--denoiser", "no_such_pkg.mod:make"], "cannot import denoiser 'no_such_pkg.mod:make'"),
    (["--steps", "many"], "invalid int value: 'many'"),
    (["--shape", "1,x,0"], "--shape"),
    (["--z0", "/nonexistent/z0.pt"], "cannot load z0 from '/nonexistent/z0.pt': no such file"),
    (["--shape", "8x8"], "gives samples of shape (8, 8), but denoiser 'digits' takes samples of "
                         "shape (1, 8, 8) (C,H,W)"),
    (["--shape", "3,8,8", "--denoiser", "conv"], "shape (3, 8, 8), but denoiser 'conv' takes"),
])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(args, needle, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["run", *args, "--out", str(out_dir)], capsys)
    assert code == 1
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()  # not even an empty directory


def test_a_z0_file_that_is_garbage_or_of_the_wrong_shape_is_named(tmp_path, capsys):
    import numpy as np

    (tmp_path / "garbage.pt").write_bytes(b"not a pickle at all")
    np.save(tmp_path / "flat.npy", np.zeros((2, 64)))
    for name, needle in (("garbage.pt", "is not a tensor saved with torch.save (.pt) or "
                                        "numpy.save (.npy)"),
                         ("flat.npy", "gives samples of shape (64,), but denoiser 'digits' "
                                      "takes samples of shape (1, 8, 8)")):
        out_dir = tmp_path / f"out_{name}"
        code, out, err = run_cli(["run", "--z0", str(tmp_path / name), "--out", str(out_dir)],
                                 capsys)
        assert code == 1 and needle in err and str(tmp_path / name) in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out_dir.exists()


def test_a_denoiser_that_cannot_take_the_input_says_which_shape_came(tmp_path, capsys,
                                                                     monkeypatch):
    (tmp_path / "den_mod.py").write_text(textwrap.dedent("""
        import torch

        class Den(torch.nn.Module):
            sample_shape = (3, 8, 8)

            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

            def forward(self, x, sigma):
                return self.conv(x)

        def make():
            return Den()
    """))
    out_dir = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", "den_mod:make", "--shape", "3,4",
                              "--out", str(out_dir)], capsys)
    # a factory's sample_shape is checked before anything runs
    assert code == 1 and "--shape 3,4 gives samples of shape (3, 4)" in err, err
    assert not out_dir.exists()
    import gradcheck
    from gradcheck.errors import DenoiserError
    from gradcheck.sampling import ResSampler, SamplerConfig

    sys.path.insert(0, str(tmp_path))
    try:
        import den_mod
    finally:
        sys.path.remove(str(tmp_path))
    import torch

    smp = ResSampler(den_mod.make().double(), SamplerConfig(steps=2))
    with pytest.raises(DenoiserError, match=r"raised RuntimeError on an input of shape "
                                            r"\(2, 1, 8, 8\) \(float64\): .*takes samples of "
                                            r"shape \(3, 8, 8\)"):
        gradcheck.diagnose(smp, torch.zeros(2, 1, 8, 8, dtype=torch.float64))


def test_a_rerun_with_other_modes_leaves_no_graph_of_the_old_ones(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run_cli(["run", *FAST, "--mode", "all", "--out", str(out_dir)], capsys)[0] == 0
    assert (out_dir / "graph_fresh_noise.dot").exists()
    assert run_cli(["run", *FAST, "--mode", "default", "--out", str(out_dir)], capsys)[0] == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert not [n for n in names if "learnable" in n or "fresh" in n or "leaves" in n], names
    assert "graph_default.dot" in names and "report.json" in names
    (out_dir / "notes.txt").write_text("mine")  # not gradcheck's: never touched
    assert run_cli(["run", *FAST, "--mode", "default", "--out", str(out_dir)], capsys)[0] == 0
    assert (out_dir / "notes.txt").read_text() == "mine"


def test_an_error_in_the_middle_of_a_run_leaves_no_new_directory(tmp_path, capsys,
                                                                  monkeypatch):
    (tmp_path / "bad_den.py").write_text("def make():\n    return lambda x, s: x[:, :1]\n")
    out_dir = tmp_path / "new" / "out"
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", "bad_den:make", "--shape", "2,8,8",
                              "--out", str(out_dir)], capsys)
    assert code == 1 and "returned shape (2, 1, 8, 8), expected the input's shape" in err, err
    assert not (tmp_path / "new").exists()


def test_unwritable_out_fails_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    code, out, err = run_cli(["run", *FAST, "--out", str(blocker / "sub")], capsys)
    assert code == 1 and "cannot write to output directory" in err and str(blocker) in err
    assert out == ""


def test_nan_in_z0_file_is_named(tmp_path, capsys):
    import torch

    z = torch.randn(2, 1, 8, 8)
    z[1, 0, 2, 3] = float("nan")
    torch.save(z, tmp_path / "z0.pt")
    code, out, err = run_cli(["run", *FAST, "--z0", str(tmp_path / "z0.pt"),
                              "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "z0 contains 1 non-finite value(s) (1 NaN, 0 Inf) of 128" in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_z0_from_file_is_used(tmp_path, capsys):
    import torch

    torch.save(torch.randn(3, 1, 8, 8), tmp_path / "z0.pt")
    code, out, err = run_cli(["run", *FAST, "--z0", str(tmp_path / "z0.pt"), "--json",
                              "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and json.loads(out)["config"]["z0_shape"] == [3, 1, 8, 8]


def _user_module(tmp_path: Path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_denoiser_with_wrong_shape(tmp_path, monkeypatch, capsys):
    mod = _user_module(tmp_path, monkeypatch, "bad_shape_den", """
        def make():
            return lambda x, sigma: x[..., :4]
    """)
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", f"{mod}:make", "--shape", "1,8,8",
                              "--out", "o"], capsys)
    assert code == 1
    assert "returned shape (2, 1, 8, 4), expected the input's shape (2, 1, 8, 8)" in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_user_denoiser_returning_non_tensor(tmp_path, monkeypatch, capsys):
    mod = _user_module(tmp_path, monkeypatch, "bad_type_den", """
        def make():
            return lambda x, sigma: x.tolist()
    """)
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", f"{mod}:make", "--out", "o"], capsys)
    assert code == 1 and "does not say its sample shape: pass --shape C,H,W" in err
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", f"{mod}:make", "--shape", "1,8,8",
                              "--out", "o"], capsys)
    assert code == 1 and "returned list, expected a tensor of shape (2, 1, 8, 8)" in err


def test_broken_user_denoiser_exits_2_with_the_report_written(tmp_path, monkeypatch, capsys):
    mod = _user_module(tmp_path, monkeypatch, "detaching_den", """
        import torch
        class Den(torch.nn.Module):
            sample_shape = (1, 4, 4)
            def forward(self, x, sigma):
                s = sigma.reshape(-1, 1, 1, 1)
                return (0.25 / (0.25 + s ** 2) * x).detach()   # the bug
        def make():
            return Den()
    """)
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", f"{mod}:make", "--out", "o"], capsys)
    assert code == 2, err
    assert "mode default: FAIL" in out and "FAIL  numeric_directional" in out
    rec = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rec["passed"] is False and rec["config"]["z0_shape"] == [2, 1, 4, 4]


def test_a_sampler_error_is_a_finding_and_debug_shows_traceback(tmp_path, monkeypatch, capsys):
    mod = _user_module(tmp_path, monkeypatch, "raising_den", """
        def make():
            def den(x, sigma):
                raise RuntimeError("CUDA out of memory (pretend)")
            return den
    """)
    # the sampler's own error is a finding with a report (exit 2), not a traceback; --debug
    # prints the traceback as it came
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", f"{mod}:make", "--shape", "1,4,4",
                              "--out", "o", "--no-html"], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert "the sampler raised RuntimeError in the forward pass" in out
    assert "CUDA out of memory (pretend)" in out and "raising_den.py:" in out
    code, out, err = run_cli(["run", "--path", ".", "--denoiser", f"{mod}:make", "--shape", "1,4,4",
                              "--out", "o", "--no-html", "--debug"], capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "pretend" in err


def test_no_command_prints_help_and_exits_1(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 1 and "usage: gradcheck" in out


def test_console_script_and_python_m(tmp_path):
    exe = shutil.which("gradcheck", path=os.path.dirname(sys.executable))
    assert exe, "the console script 'gradcheck' is not installed next to python"
    for cmd in ([exe], [sys.executable, "-m", "gradcheck"]):
        res = subprocess.run([*cmd, "run", *FAST, "--out", str(tmp_path)], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert "verdict: all checks pass" in res.stdout
        bad = subprocess.run([*cmd, "run", "--steps", "0"], capture_output=True, text=True,
                             timeout=300)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1


def test_progress_while_waiting_plain_when_piped_a_bar_on_a_terminal(tmp_path):
    """Issue 30, item 3: the stages (and, on a terminal, the denoiser calls) as they go, on
    stderr; one plain line per stage when piped; nothing with --no-progress."""
    import io
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "gradcheck", "run", "--steps", "4", "--no-html",
           "--out", str(tmp_path / "o")]
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    # a quick run, piped, prints nothing more (its errors stay one line); a run past the
    # delay prints the stages so far, then each as it starts
    assert piped.stderr == ""
    from gradcheck.progress import Display

    buf = io.StringIO()
    d = Display(stream=buf, tty=False, delay_s=0.2)
    d("mode", "default")
    d("stage", "record")
    assert buf.getvalue() == ""
    import time

    time.sleep(0.25)
    d("stage", "numeric")
    assert buf.getvalue().splitlines() == [
        "[gradcheck] mode default", "[gradcheck] mode default: the recorded pass",
        "[gradcheck] mode default: finite differences"]
    assert "\r" not in buf.getvalue()  # no bar when piped

    buf = io.StringIO()
    d = Display(stream=buf, tty=True)
    d("mode", "default")
    d("stage", "record")
    for _ in range(3):
        d("call", None)
    d("stage", "numeric")
    d.close()
    text = buf.getvalue()
    assert "mode default: the recorded pass" in text and "denoiser calls" in text
    assert "mode default: finite differences: 3 denoiser calls" in text
