"""Torch is patched in one place (gradcheck.patches), per thread: a diagnosis in one thread leaves
every other thread's grad mode, no_grad blocks, hooks and Functions alone, two diagnoses at once
do not tangle, and torch is exactly as it was afterwards."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import torch

import gradcheck
from gradcheck import adapters, patches
from gradcheck.sampling import GaussianDenoiser

from . import nested_no_grad as nn_
from .conftest import CallFault, ResetCalls, sampler, z0_like

DEN = GaussianDenoiser(0.1, 0.5)
ROOT = Path(__file__).resolve().parent.parent


def _torch_attributes() -> dict[str, object]:
    """Every attribute gradcheck may wrap, as torch holds it now."""
    out = {}
    for p in patches.every_point():
        owner = p.owner()
        if owner is not None:
            out[f"{getattr(owner, '__name__', owner)}.{p.name}"] = owner.__dict__.get(p.name)
    return out


def _no_grad_worker(stop: threading.Event, seen: dict[str, int]) -> None:
    """Another thread's everyday code: no_grad blocks must give tensors without a graph, and
    its grad mode must be on outside them."""
    x = torch.ones(8, requires_grad=True)
    while not stop.is_set():
        with torch.no_grad():
            y = x * 2
        seen["blocks"] += 1
        seen["leaked"] += int(y.requires_grad)
        seen["mode_off"] += int(not torch.is_grad_enabled())


def test_allow_grad_in_one_thread_leaves_another_threads_no_grad_alone():
    stop, seen = threading.Event(), {"blocks": 0, "leaked": 0, "mode_off": 0}
    worker = threading.Thread(target=_no_grad_worker, args=(stop, seen), daemon=True)
    worker.start()
    try:
        rep = gradcheck.diagnose(adapters.function(nn_.sample, DEN), torch.randn(
            2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
            allow_grad=True, locate="always")
    finally:
        stop.set()
        worker.join(timeout=60)
    assert seen["blocks"] > 0 and seen["leaked"] == 0 and seen["mode_off"] == 0, seen
    assert rep.passed, gradcheck.summary(rep)
    here = Path(__file__).name
    where = [s.location or "" for s in rep.allowed_grad or []]
    assert where and all("nested_no_grad.py" in w for w in where), where
    assert not [w for w in where if here in w]


def test_two_diagnoses_at_once_leave_torch_exactly_as_before():
    before = _torch_attributes()
    results: dict[str, object] = {}

    def diagnose(name: str, smp) -> None:
        try:
            results[name] = gradcheck.diagnose(smp, z0_like(), locate="always")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread's assertion
            results[name] = exc

    broken = ResetCalls(CallFault(DEN, at=1, fault="detach_out"), sampler(DEN, steps=3))
    threads = [threading.Thread(target=diagnose, args=("healthy", sampler(DEN, steps=3))),
               threading.Thread(target=diagnose, args=("broken", broken)),
               threading.Thread(target=diagnose, args=("allowed", adapters.function(
                   nn_.sample, DEN)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    assert results["healthy"].passed
    assert not results["broken"].passed
    assert results["broken"].locator.primary.cause in ("detach", "detach_out"), \
        results["broken"].locator.primary.describe()
    assert not results["allowed"].passed  # its no_grad stands: it was not allowed
    assert _torch_attributes() == before
    assert not [p for p in patches.every_point() if p.installed and p is not patches.GRAD_MODE]


def test_the_watcher_installed_inside_an_allowed_sampler_keeps_working(tmp_path):
    """In a fresh process: the grad-mode watcher is installed while an AllowGrad is active (a
    sampler module imported under it); after the AllowGrad ends the watcher still names a
    switch, and torch's switch is its own again once nothing subscribes."""
    script = tmp_path / "watch.py"
    script.write_text(textwrap.dedent("""
        import torch
        from gradcheck import patches
        from gradcheck.allow import AllowGrad
        from gradcheck.gradmode import watch_grad_mode, who_switched_off

        real = torch._C._set_grad_enabled
        with AllowGrad() as allow:
            watch_grad_mode()
            torch.set_grad_enabled(False)  # neutralised: grad stays on
            assert torch.is_grad_enabled()
        assert [s.api for s in allow.sites] == ["torch.set_grad_enabled(False)"], allow.sites
        torch.set_grad_enabled(False)  # seen by the watcher
        off = who_switched_off()
        assert off and off["location"].endswith("watch.py:13"), off
        torch.set_grad_enabled(True)
        assert patches.GRAD_MODE.installed  # the watcher stays, for good
        assert torch._C._set_grad_enabled is not real
        print("ok")
    """))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr
