"""Files stay where they belong: a report directory is replaced whole (a failure or a kill -9
part-way leaves the previous report as it was), only the files gradcheck wrote (its manifest) are
ever replaced or removed, and the wheel carries everything the page needs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradcheck.cli import main
from gradcheck.report.staging import MANIFEST, written_by_gradcheck

from . import hostile

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--steps", "2", "--denoiser", "gaussian", "--graph", "never"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_only_files_gradcheck_wrote_are_replaced_or_removed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = {"graph_holiday.png": b"\x89PNG mine", "autograd_notes.dot": b"digraph mine {}",
            "index.html.bak": b"mine"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    (out / "photos").mkdir()
    (out / "photos" / "a.txt").write_text("mine too")
    assert main(["run", *FAST, "--mode", "all", "--out", str(out)]) == 0
    first = written_by_gradcheck(out)
    assert "graph_fresh_noise.dot" in first and not set(mine) & first
    assert main(["run", *FAST, "--mode", "default", "--out", str(out)]) == 0
    capsys.readouterr()
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if "fresh" in n or "learnable" in n]  # gradcheck's, gone
    for name, data in mine.items():
        assert (out / name).read_bytes() == data
    assert (out / "photos" / "a.txt").read_text() == "mine too"
    assert written_by_gradcheck(out) == names - set(mine) - {"photos", MANIFEST}


def test_a_failed_report_leaves_the_old_one_as_it_was(tmp_path, capsys, monkeypatch):
    from gradcheck.report import render as render_mod

    src = tmp_path / "in.json"
    src.write_text(json.dumps(hostile.passing_run()))
    out = tmp_path / "out"
    assert main(["report", str(src), "--out", str(out), "--graph", "never"]) == 0
    before = _snapshot(out)

    def boom(*a, **k):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(render_mod.opviews, "op_views", boom)
    assert main(["report", str(src), "--out", str(out), "--graph", "never"]) == 1
    assert main(["report", str(src), "--out", str(tmp_path / "new" / "dir")]) == 1
    capsys.readouterr()
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["in.json", "out"]  # no staging, no new directory


def _consistent(out: Path) -> str:
    """'old' or 'new': the directory holds exactly one whole report, with every file its page
    and manifest name."""
    listed = written_by_gradcheck(out)
    present = {p.name for p in out.iterdir()} - {MANIFEST}
    assert listed == present, (listed ^ present)
    html = (out / "index.html").read_text()
    rec = json.loads((out / "report.json").read_text())
    modes = set(rec["modes"])
    for name in present:
        if name.startswith("graph_"):
            assert name.split(".")[0][len("graph_"):] in modes
    return "new" if modes == {"default"} else "old"


def test_a_kill_during_a_rerender_never_mixes_two_reports(tmp_path):
    """``gradcheck report`` killed with SIGKILL at moments through its run: the directory always
    holds either the whole old report or the whole new one."""
    exe = Path(sys.executable).with_name("gradcheck")
    if not exe.exists():
        pytest.skip("the gradcheck console script is not installed")
    two = hostile.passing_run()
    one = hostile.passing_run()
    one["modes"] = {"default": one["modes"]["default"]}
    (tmp_path / "two.json").write_text(json.dumps(two))
    (tmp_path / "one.json").write_text(json.dumps(one))
    out = tmp_path / "out"
    seen = set()
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0):
        if out.exists():
            shutil.rmtree(out)
        subprocess.run([str(exe), "report", str(tmp_path / "two.json"), "--out", str(out)],
                       check=False, capture_output=True, timeout=300)
        assert _consistent(out) == "old"
        proc = subprocess.Popen([str(exe), "report", str(tmp_path / "one.json"), "--out",
                                 str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.add(_consistent(out))
        for stale in tmp_path.glob(".out.gradcheck-*"):  # a killed run's staging, beside --out
            shutil.rmtree(stale)
    assert "old" in seen  # killed before the swap at least once


def test_the_built_wheel_renders_its_page(tmp_path):
    """The wheel, installed (not editable) into a directory of its own, runs the built-in model
    and renders the page: every file the page needs is packaged."""
    dist = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(dist)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip()[-200:]}")
    assert res.returncode == 0, res.stderr
    (wheel,) = dist.glob("gradcheck-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import gradcheck; print(gradcheck.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    run = subprocess.run([sys.executable, "-m", "gradcheck", "run", "--steps", "2", "--out",
                          "r"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    again = subprocess.run([sys.executable, "-m", "gradcheck", "report", "r/report.json",
                            "--out", "r2"], cwd=work, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    for page in (work / "r" / "index.html", work / "r2" / "index.html"):
        html = page.read_text()
        assert "Content-Security-Policy" in html and "gcOpenStep" in html


def test_a_folder_gradcheck_did_not_make_is_written_into_not_replaced(tmp_path, capsys,
                                                                      monkeypatch):
    """``gradcheck report report.json`` inside the folder a sent file lies in (the working
    directory, the user's files beside it, no manifest): the files go in one by one, the folder
    itself (its inode, the user's files) stays, and the command says so."""
    inbox = tmp_path / "downloads"
    inbox.mkdir()
    (inbox / "report.json").write_text(json.dumps(hostile.passing_run()))
    (inbox / "holiday.jpg").write_bytes(b"mine")
    inode = inbox.stat().st_ino
    monkeypatch.chdir(inbox)
    assert main(["report", "report.json", "--graph", "never"]) == 0
    out = capsys.readouterr().out
    assert "written into" in out and "file by file" in out
    assert inbox.stat().st_ino == inode and (inbox / "holiday.jpg").read_bytes() == b"mine"
    assert (inbox / "index.html").exists() and "index.html" in written_by_gradcheck(inbox)
    assert "holiday.jpg" not in written_by_gradcheck(inbox)
