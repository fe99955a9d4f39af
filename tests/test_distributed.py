"""torch.distributed on CPU: gloo, 2 processes on this machine, launched with torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo on one machine")


def _line(needle: str) -> int:
    """The line of dist_script.py holding ``needle`` (what the locator must point at)."""
    lines = (HERE / "dist_script.py").read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "found.json"
    from gradcheck.distributed import _free_port

    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--max_restarts", "0",
         str(HERE / "dist_script.py"), str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("layout", ["ddp", "fsdp", "cp"])
@pytest.mark.parametrize("mode", ["default", "learnable_step_noise"])
def test_layouts_pass_and_match_the_single_process_gradient(found, layout, mode):
    r = found["layouts"][f"{layout}/{mode}"]
    assert r["passed"], r["failed"]
    assert r["world_size"] == 2 and r["parallel"] == layout and len(r["ranks"]) == 2
    assert max(r["rel_errors"]) <= 1e-6, r["rel_errors"]
    assert r["z0_shape"] == [4, 1, 8, 8]  # the merged probe has the global shape


def test_plain_all_gather_is_named_with_its_line(found):
    f = found["faults"]["all_gather"]
    assert not f["passed"] and "grad_reaches_z0" in f["failed"]
    assert f["cause"] == "non_autograd_collective"
    assert f["op"] == "torch.distributed.all_gather"
    assert f["step"] == 0  # the same cut in every denoiser call: named where it first happens
    assert f["location"].endswith(f"dist_script.py:{_line('dist.all_gather(parts, x)')}")


def test_detach_before_broadcast_is_named(found):
    f = found["faults"]["broadcast"]
    assert not f["passed"] and f["cause"] == "detach"
    assert f["location"].endswith(f"dist_script.py:{_line('t = x.detach().clone()')}")


def test_a_rank_whose_shard_is_excluded_fails_the_per_rank_check(found):
    f = found["faults"]["exclude"]
    assert not f["passed"] and "grad_reaches_every_rank" in f["failed"]
    assert "rank 1's shard of z0 receives no gradient" in f["every_rank"]
    assert f["rank"] == 1 and f["cause"] == "detach"
    assert [x["z0_status"] for x in f["ranks"]] == ["ok", "unreached"]


@pytest.mark.parametrize("layout", ["ddp", "fsdp", "cp"])
@pytest.mark.parametrize("mode", ["default", "learnable_step_noise"])
def test_n_processes_compute_what_one_process_does(found, layout, mode):
    # the default loss (a baseline from other noise) included: the baseline and the numeric
    # direction are the shards of the single-process ones, not drawn per rank
    r = found["parity"][f"{layout}/{mode}"]
    assert r["passed"] and r["same_probes"]
    assert r["loss"] <= 1e-12 and r["grad"] <= 1e-12, r
    assert r["probe_norms"] <= 1e-12, r  # every probe's merged |g| is the single-process one
    # a one-sided difference (the default level in float64, h = 1e-6 of z0's RMS) turns the
    # ranks' other summation order of the loss into eps|L|/h of its value: compared within the
    # check's own round-off allowance, and still to 1e-7 relative
    assert r["reverse"] <= 1e-12 and r["one_sided"], r
    assert r["fd_over_roundoff"] <= 1.0 and r["fd"] <= 1e-7, r
    assert r["loss_probe"] == 1.0  # dL/dL, not sqrt(world)


def test_a_cut_on_one_rank_only_fails_the_run_naming_the_rank(found):
    f = found["faults"]["one_call_one_rank"]
    assert not f["passed"] and "every_rank_passes" in f["failed"]
    # only rank 1 loses D_out[2]; the numeric check is global (one loss), so it fails on both
    steps = [x["rank"] for x in f["ranks"] if "grad_reaches_every_step" in x["failed"]]
    assert steps == [1]
    assert "rank 1 fails grad_reaches_every_step" in f["every_rank_passes"]


def _gradcheck(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradcheck", *argv], cwd=HERE, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_cli_nproc_writes_one_report_from_rank_0(tmp_path):
    out = tmp_path / "r"
    res = _gradcheck("run", "--nproc", "2", "--parallel", "ddp", "--out", str(out),
                     "--graph", "never", "--optim-steps", "1", "--batch", "4")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("verdict: all checks pass") == 1  # rank 0 alone speaks
    assert "2 processes (ddp)" in res.stdout and "grad_reaches_every_rank" in res.stdout
    data = json.loads((out / "report.json").read_text())
    for rep in data["modes"].values():
        assert rep["world_size"] == 2 and len(rep["ranks"]) == 2
        z = next(p for p in rep["probes"] if p["kind"] == "z0")
        assert z["shape"] == [4, 1, 8, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert "2 processes (ddp)" in (out / "index.html").read_text()


def test_cli_nproc_report_equals_the_one_process_report(tmp_path):
    common = ["run", "--mode", "default", "--graph", "never", "--optim-steps", "1",
              "--batch", "4", "--no-html"]
    one = _gradcheck(*common, "--out", str(tmp_path / "one"))
    two = _gradcheck(*common, "--nproc", "2", "--parallel", "ddp", "--out", str(tmp_path / "two"))
    assert one.returncode == 0 and two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    a = json.loads((tmp_path / "two" / "report.json").read_text())["modes"]["default"]
    b = json.loads((tmp_path / "one" / "report.json").read_text())["modes"]["default"]
    assert abs(a["loss"] - b["loss"]) <= 1e-12 * abs(b["loss"])
    assert abs(a["numeric"]["reverse"] - b["numeric"]["reverse"]) <= 1e-12 * \
        abs(b["numeric"]["reverse"])
    for p, q in zip(a["probes"], b["probes"]):
        assert p["name"] == q["name"] and abs(p["norm"] - q["norm"]) <= 1e-12 * q["norm"], p


def test_cli_failing_rank_exits_1_with_one_line_not_a_hang(tmp_path):
    res = _gradcheck("run", "--nproc", "2", "--denoiser", "dist_models:fails_on_rank_one",
                     "--out", str(tmp_path / "r"), "--dist-timeout", "30", timeout=240)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "rank 1:" in err[0] and "weights missing on this node" in err[0]
    assert not (tmp_path / "r").exists()  # no report, and no directory left behind


def test_cli_rank_killed_by_a_signal_is_named_with_its_own_last_error(tmp_path):
    res = _gradcheck("run", "--nproc", "2", "--denoiser", "dist_models:aborts_on_rank_one",
                     "--out", str(tmp_path / "r"), "--dist-timeout", "30", timeout=240)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert "rank 1 was killed by SIGABRT" in err[0] and "Connection reset by peer" in err[0]
    assert not (tmp_path / "r").exists()


def test_cli_a_rank_dying_after_the_run_completed_keeps_the_verdict_and_warns(tmp_path):
    out = tmp_path / "r"
    res = _gradcheck("run", "--nproc", "2", "--denoiser", "dist_models:aborts_on_rank_one_at_exit",
                     "--out", str(out), "--graph", "never", "--no-numeric", "--optim-steps", "0",
                     timeout=240)
    assert res.returncode == 0, res.stderr
    assert (out / "report.json").exists()
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradcheck: warning: the run completed")
    assert "rank 1 was killed by SIGABRT" in err[0]


TORCHRUN_STDERR = """\
[rank1]: some output
terminate called after throwing an instance of 'gloo::IoException'
  what():  [../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection closed by peer
W1128 03:29:48.307000 20932 torch/distributed/elastic/multiprocessing/api.py:1028] Sending \
process 20934 closing signal SIGTERM
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/torch/distributed/run.py", line 1032, in <module>
    main()
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 20934)  (SIGTERM)
  traceback : Signal 15 (SIGTERM) received by PID 20934
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_03:29:48
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 20935)  (SIGABRT)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 20935
"""


def test_launch_failure_names_the_root_cause_rank_its_signal_and_its_own_error():
    from gradcheck.distributed import launch_failure

    why = launch_failure(TORCHRUN_STDERR)
    assert why.startswith("rank 1 was killed by SIGABRT (exit code -6): what():")
    assert "Connection closed by peer" in why and "\n" not in why
    plain = TORCHRUN_STDERR.replace("-6 (pid: 20935)  (SIGABRT)", "3 (pid: 20935)")
    plain = plain.replace("terminate called", "").replace("  what():", "ValueError: bad shard")
    assert launch_failure(plain).startswith("rank 1 exited with code 3: ValueError: bad shard")
    assert launch_failure("") == "no output"


@pytest.mark.parametrize("argv, needle", [
    (["--nproc", "2", "--parallel", "tp"], "unknown --parallel 'tp'"),
    (["--nproc", "2", "--batch", "3"], "--batch 3 does not split over --nproc 2"),
    (["--nproc", "0"], "--nproc must be >= 1"),
])
def test_cli_bad_distributed_options(argv, needle, tmp_path):
    res = _gradcheck("run", *argv, "--out", str(tmp_path / "r"))
    assert res.returncode == 1 and needle in res.stderr and len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize("layout, extra", [
    ("ddp", ["--objective", "diverge", "--norm-reg", "chi", "--clip", "0.5",
             "--mode", "learnable_step_noise"]),
    ("cp", ["--objective", "class:3", "--norm-reg", "renorm"]),
])
def test_optimize_nproc_takes_the_single_process_steps(layout, extra, tmp_path):
    common = ["--iters", "3", "--batch", "4", "--dtype", "float64", "--no-progress", *extra]
    one = _gradcheck("optimize", *common, "--out", str(tmp_path / "one"))
    two = _gradcheck("optimize", "--nproc", "2", "--parallel", layout, *common,
                     "--out", str(tmp_path / "two"))
    assert one.returncode == 0 and two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert two.stdout.count("record: ") == 1
    a = json.loads((tmp_path / "two" / "optimize.json").read_text())
    b = json.loads((tmp_path / "one" / "optimize.json").read_text())
    for key in ("values", "grad_norms", "z_norms"):
        for x, y in zip(a["result"][key], b["result"][key]):
            assert abs(x - y) <= 1e-6 * max(abs(y), 1e-12), (key, x, y)
    assert a["samples_after"] == b["samples_after"] or all(
        abs(u - v) < 1e-6 for ra, rb in zip(a["samples_after"], b["samples_after"])
        for u, v in zip(ra, rb))
