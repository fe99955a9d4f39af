"""report.json is input someone may have sent: every hostile file of the corpus (tests/hostile.py)
is refused in one line, or rendered inert (no markup, script, handler or javascript: link from the
file in the page, its SVGs or its DOT files; nothing written outside --out; no terminal escape
printed), and a stored verdict is never trusted over the evidence."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gradcheck.cli import main
from gradcheck.codec import RecordError, parse_json

from . import hostile
from .browser import Page
from .test_report import need_chromium


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_inert_page(html: str) -> None:
    p = _Elements()
    p.feed(html)
    scripts = [a for t, a in p.tags if t == "script"]
    assert len(scripts) == 2 and dict(scripts[0]).get("type") == "application/json"
    for tag, attrs in p.tags:
        assert tag not in ("img", "iframe", "object", "embed", "svg") or tag in ("img", "svg") \
            and all(not n.startswith("on") for n, _ in attrs)
        for n, v in attrs:
            assert not n.startswith("on"), (tag, n, v)
            assert not (v or "").strip().lower().startswith("javascript:"), (tag, n, v)
        if tag == "img":
            assert dict(attrs)["src"].startswith("data:image/png;base64,")
    csp = [dict(a) for t, a in p.tags if t == "meta" and dict(a).get("http-equiv")]
    assert csp and "script-src 'sha256-" in csp[0]["content"]
    assert "default-src 'none'" in csp[0]["content"]


def assert_inert_svg(path: Path) -> None:
    root = ET.fromstring(path.read_text())
    for el in root.iter():
        assert not el.tag.endswith("script"), path
        for n, v in el.attrib.items():
            assert not n.split("}")[-1].startswith("on"), (path, el.tag, n)
            assert "javascript:" not in v.lower() or n.split("}")[-1] in ("title", "tooltip"), \
                (path, el.tag, n, v)
            assert not (n.endswith("href") and v.strip().lower().startswith("javascript:"))


def _render(case: hostile.Case, tmp_path: Path, capsys) -> tuple[int, str, str, Path]:
    src = tmp_path / "in" / "hostile.json"
    src.parent.mkdir()
    src.write_text(case.text())
    out = tmp_path / "a" / "b" / "out"
    before = _tree(tmp_path)
    code = main(["report", str(src), "--out", str(out)])
    o, e = capsys.readouterr()
    new = _tree(tmp_path) - before
    assert all(n.startswith(os.path.join("a", "b", "out")) or n in ("a", os.path.join("a", "b"))
               for n in new), new  # nothing outside --out
    return code, o, e, out


@pytest.mark.parametrize("case", [c for c in hostile.CASES if c.refused], ids=lambda c: c.name)
def test_a_hostile_record_is_refused_in_one_line(case, tmp_path, capsys):
    code, out, err, out_dir = _render(case, tmp_path, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("gradcheck: error: "), err
    assert case.refused in err, err
    assert "\x1b" not in err and len(err) < 1000
    assert not out_dir.exists() and not (tmp_path / "a").exists()  # no half-written report


@pytest.mark.parametrize("case", [c for c in hostile.CASES if not c.refused], ids=lambda c: c.name)
def test_a_hostile_record_renders_inert(case, tmp_path, capsys):
    code, out, err, out_dir = _render(case, tmp_path, capsys)
    assert code in (0, 2), err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert_inert_page((out_dir / "index.html").read_text())
    for svg in out_dir.glob("*.svg"):
        assert_inert_svg(svg)
    for dot in out_dir.glob("*.dot"):
        text = dot.read_text()
        assert "URL=" not in text.replace('\\"', "") or 'URL=\\"' in text
        if shutil.which("dot"):  # the DOT parses, and draws no link
            res = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True,
                                 timeout=60)
            assert res.returncode == 0, res.stderr
            drawn = dot.with_suffix(".check.svg")
            drawn.write_text(res.stdout)
            assert_inert_svg(drawn)
            assert not [e for e in ET.fromstring(res.stdout).iter() if e.tag.endswith("}a")
                        and any(n.endswith("href") for n in e.attrib)]
            drawn.unlink()
    names = [p.name for p in out_dir.iterdir()]
    assert all(n.replace(".", "").replace("_", "").replace("-", "").isalnum() for n in names), names


def test_the_size_limit_is_one_line(monkeypatch):
    import gradcheck.codec as codec

    monkeypatch.setattr(codec, "MAX_BYTES", 1000)
    with pytest.raises(RecordError, match=r"2,000 bytes, more than the 1,000"):
        parse_json(" " * 2000)


def test_a_lying_stored_verdict_is_judged_again_and_named(tmp_path, capsys):
    for make in (hostile.stored_verdict_lies, hostile.no_checks):
        src = tmp_path / f"{make.__name__}.json"
        src.write_text(json.dumps(make()))
        code = main(["report", str(src), "--out", str(tmp_path / make.__name__)])
        out, err = capsys.readouterr()
        assert code == 2, err  # FAIL: the evidence says the gradient does not reach z0
        assert "stored verdict disagrees with its evidence" in err
        assert "stored PASS, re-judged FAIL" in err or "not stored, re-judged FAIL" in err
        html = (tmp_path / make.__name__ / "index.html").read_text()
        assert "default: FAIL" in html and "stored verdict disagrees" in html
        saved = json.loads((tmp_path / make.__name__ / "report.json").read_text())
        assert saved["passed"] is False


def test_diff_judges_both_records_again_and_refuses_a_bad_type(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(hostile.passing_run()))
    lie = tmp_path / "lie.json"
    lie.write_text(json.dumps(hostile.stored_verdict_lies()))
    bad = tmp_path / "bad.json"
    d = hostile.passing_run()
    next(iter(d["modes"].values()))["checks"][0]["passed"] = "no"
    bad.write_text(json.dumps(d))
    assert main(["diff", str(good), str(bad)]) == 1
    assert "expected true or false" in capsys.readouterr().err
    marked = tmp_path / "marked.json"
    marked.write_text(json.dumps(hostile.markup_everywhere()))
    code = main(["diff", str(good), str(marked), "--out", str(tmp_path / "d")])
    out, err = capsys.readouterr()
    assert code in (0, 2) and "\x1b" not in out + err
    assert_inert_page_without_script((tmp_path / "d" / "index.html").read_text())


def assert_inert_page_without_script(html: str) -> None:
    p = _Elements()
    p.feed(html)
    assert not [t for t, _ in p.tags if t == "script"]
    assert all(not n.startswith("on") for _, a in p.tags for n, _ in a)
    csp = [dict(a)["content"] for t, a in p.tags if t == "meta" and dict(a).get("http-equiv")]
    assert csp and "script-src 'none'" in csp[0]


def test_hostile_pages_run_no_injected_script_in_chromium(tmp_path, capsys):
    """The markup-everywhere page in a real browser: the page's own script runs (the CSP admits
    it by hash), every step's op view and a search draw the hostile strings, and no injected
    alert, handler or element ever runs or appears."""
    need_chromium()
    src = tmp_path / "hostile.json"
    src.write_text(json.dumps(hostile.markup_everywhere()))
    assert main(["report", str(src), "--out", str(tmp_path / "out")]) in (0, 2)
    capsys.readouterr()
    with Page() as page:
        page.goto(tmp_path / "out" / "index.html")
        assert page.evaluate("document.documentElement.dataset.ready") == "1"
        page.evaluate("""(function () {
            document.querySelectorAll('[data-open-step],[data-step]').forEach(function (a) {
              var m = a.closest('[data-mode]');
              if (m && window.gcOpenStep) window.gcOpenStep(m.dataset.mode, a.dataset.step || a.dataset.openStep);
            });
            window.gcSearch('img'); window.gcSearch('script'); window.gcSearch('x');
            return 1; })()""")
        injected = page.evaluate(
            "document.querySelectorAll('img:not([src^=\"data:\"]),script:not([id=gc-data]):not(:last-of-type),"
            "[onerror],[onload],iframe').length")
        dialogs = [e for e in page.events if e.get("method") == "Page.javascriptDialogOpening"]
        assert injected == 0 and dialogs == []
        assert page.evaluate("document.title").startswith("gradcheck report")
        assert page.evaluate("document.querySelectorAll('#gc-results li').length") >= 1
