"""gradcheck's pytest plugin (the ``pytest11`` entry point ``gradcheck``).

- fixture ``gradcheck_trace``: a recorder for the test: ``gradcheck_trace.diagnose(fn, z0)``,
  the ``assert_*`` helpers of :mod:`gradcheck.testing` as methods, ``.reports`` (every diagnosis
  made in the test, also by direct ``gradcheck.diagnose`` calls) and ``.trace()``;
- option ``--gradcheck-report DIR``: write the HTML report of every diagnosis made in a test to
  ``DIR/<test id>/`` (``-2``, ``-3``, ... for more than one);
- a failing test that made diagnoses gets a "gradcheck" section with their summaries.

pytest imports every installed plugin in every run, so this module imports no torch (nor
matplotlib): only :mod:`gradcheck.observers` until a diagnosis or a report is actually made.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from . import observers

_KEY = pytest.StashKey[list]()


def _watch_when_torch_is_there() -> None:
    """Watch grad-mode switches as early as the session allows without importing torch itself
    (the plugin loads in every pytest run): once torch is imported, before the next module is
    collected or test runs, a module that switches grad mode off at import is named."""
    import sys

    if "torch" in sys.modules:
        from .gradmode import watch_grad_mode

        watch_grad_mode()


def pytest_configure(config: pytest.Config) -> None:
    _watch_when_torch_is_there()
    if config.getoption("gradcheck_allow_grad", default=False):
        from . import testing

        testing.DEFAULTS["allow_grad"] = True


def pytest_collectstart(collector: Any) -> None:
    _watch_when_torch_is_there()


def pytest_runtest_setup(item: pytest.Item) -> None:
    _watch_when_torch_is_there()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradcheck", "gradient-flow diagnostics for diffusion samplers")
    group.addoption("--gradcheck-report", metavar="DIR", default=None,
                    help="write the HTML report of every gradcheck diagnosis made in a test "
                         "to DIR/<test id>/")
    group.addoption("--gradcheck-allow-grad", action="store_true", default=False,
                    help="diagnose with allow_grad=True: the sampler's no_grad / inference_mode "
                         "/ set_grad_enabled(False) sites neutralised and listed as what to "
                         "change")


class GradcheckRecorder:
    """What the ``gradcheck_trace`` fixture gives a test."""

    def __init__(self, reports: list) -> None:
        self.reports = reports

    def diagnose(self, sample_fn: Any, z0: Any, **kw: Any) -> Any:
        """:func:`gradcheck.diagnose` (recorded, and reported with ``--gradcheck-report``)."""
        from .diagnosis import diagnose
        from .testing import DEFAULTS

        return diagnose(sample_fn, z0, **{**DEFAULTS, **kw})

    def trace(self) -> Any:
        """:func:`gradcheck.trace`: record the gradient at your own probes."""
        from .probes import trace

        return trace()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("assert_"):
            from . import testing

            return getattr(testing, name)
        raise AttributeError(name)

    @property
    def last(self) -> Any:
        """The latest diagnosis of the test."""
        if not self.reports:
            raise LookupError("no gradcheck diagnosis was made in this test yet")
        return self.reports[-1]


@pytest.fixture
def gradcheck_trace(request: pytest.FixtureRequest) -> GradcheckRecorder:
    """A recorder of the gradcheck diagnoses made in this test (see the plugin's docs)."""
    return GradcheckRecorder(request.node.stash.setdefault(_KEY, []))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    reports = item.stash.setdefault(_KEY, [])
    try:
        with observers.observing(reports.append):
            yield
    finally:
        # keep only what the summary and --gradcheck-report need: the plain record, not the
        # live handles (z0, its gradient, the output, the loss closure: on a GPU, memory that
        # would otherwise stay alive until the whole session ends)
        reports[:] = [_plain(r) for r in reports]


def _plain(report: Any) -> Any:
    """The report as plain data (a copy without ``handles``)."""
    return type(report).from_dict(report.to_dict())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if call.when != "call":
        return
    reports = item.stash.get(_KEY, [])
    if not reports:
        return
    if rep.failed:
        from .report.terminal import mode_summary

        text = "\n\n".join("\n".join(mode_summary(r)) for r in reports)
        rep.sections.append(("gradcheck", text))
    out_dir = item.config.getoption("gradcheck_report")
    if out_dir:
        from .errors import GradcheckError

        try:
            written = _write(Path(out_dir), item.nodeid, reports)
        except GradcheckError as exc:  # an unwritable directory, say: tell, do not crash pytest
            item.config.stash.setdefault(_ERRORS, []).append(f"{item.nodeid}: {exc}")
        else:
            item.config.stash.setdefault(_WRITTEN, []).extend(written)


_WRITTEN = pytest.StashKey[list]()
_ERRORS = pytest.StashKey[list]()


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid).strip("_")[:150] or "test"


def _write(root: Path, nodeid: str, reports: list) -> list[Path]:
    from .report.write import write_report

    out = []
    for k, r in enumerate(reports):
        d = root / (_slug(nodeid) + ("" if k == 0 else f"-{k + 1}"))
        write_report(r, d, config={"test": nodeid})
        out.append(d)
    return out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    written = config.stash.get(_WRITTEN, [])
    out_dir = config.getoption("gradcheck_report")
    if out_dir:
        terminalreporter.write_line(
            f"gradcheck: wrote {len(written)} report(s) under {out_dir}")
        for err in config.stash.get(_ERRORS, []):
            terminalreporter.write_line(f"gradcheck: could not write a report: {err}", red=True)
