"""``gradcheck diff A B``: checks flipped, |g| ratios per probe, breaks appeared or gone; the
terminal, the HTML (opened in Chromium) and the exit code (2 when B is worse)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradcheck.cli import main
from gradcheck.diff import compare
from gradcheck.report import load_record

from .browser import Page
from .test_report import need_chromium


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("diff")
    out = {}
    for name, extra in (("ok", []), ("ok_seed1", ["--seed", "1"]), ("cut", ["--truncate", "2"])):
        d = base / name
        code = main(["run", "--mode", "default", "--optim-steps", "1", "--out", str(d), *extra])
        assert code == (2 if name == "cut" else 0)
        out[name] = d / "report.json"
    return out


def test_a_break_that_appears_is_worse_exit_2_and_html(runs, tmp_path, capsys):
    html_dir = tmp_path / "d"
    assert main(["diff", str(runs["ok"]), str(runs["cut"]), "--out", str(html_dir)]) == 2
    text = capsys.readouterr().out
    assert "mode default: PASS -> FAIL (worse)" in text
    assert "grad_reaches_z0: pass -> FAIL  (worse)" in text
    assert "break appeared: A none; B breaks at step" in text and "detach" in text
    assert "z0 " in text and "ok -> unreached" in text
    assert text.rstrip().endswith(f"report: {html_dir / 'index.html'}")
    assert "verdict: B is worse than A" in text
    need_chromium()
    with Page() as page:
        page.goto(html_dir / "index.html")
        banner = page.evaluate("document.querySelector('.banner').innerText")
        crosses = page.evaluate("document.querySelectorAll('svg.ratio path').length")
        rows = page.evaluate("document.querySelectorAll('tr.worse').length")
        errors = page.errors()
    assert errors == [] and banner.startswith("B is worse than A")
    assert crosses >= 10 and rows >= 4


def test_the_way_back_is_better_and_exits_0(runs, capsys):
    assert main(["diff", str(runs["cut"]), str(runs["ok"])]) == 0
    text = capsys.readouterr().out
    assert "FAIL -> PASS (better)" in text and "break gone" in text
    assert "verdict: B is not worse than A" in text


def test_ratios_are_b_over_a_for_every_probe(runs, capsys):
    a, b = load_record(runs["ok"]), load_record(runs["ok_seed1"])
    d = compare(a, b)
    md = d.modes[0]
    pa = {p.name: p.norm for p in a.modes["default"].probes}
    pb = {p.name: p.norm for p in b.modes["default"].probes}
    assert len(md.probes) == len(pa) == len(pb)
    for p in md.probes:
        assert p.ratio == pytest.approx(pb[p.name] / pa[p.name], rel=1e-12)
    assert md.z0_ratio == pytest.approx(pb["z0"] / pa["z0"], rel=1e-12)
    assert not d.worse and md.break_change is None
    # the same run against itself: nothing changed, exit 0
    assert main(["diff", str(runs["ok"]), str(runs["ok"])]) == 0
    assert "every probe's |g| within 2x of A (ratios 1..1)" in capsys.readouterr().out


def test_a_break_moving_earlier_is_worse():
    from gradcheck.records import ProbeStats

    rec = load_record(Path(__file__).parent / "golden" / "run_1euler_4.json")
    base = rec.modes[next(iter(rec.modes))]

    def cut_at(k: int):
        r = type(base).from_dict(base.to_dict())
        path = sorted((p for p in r.probes if p.kind in ("x_T", "state", "denoiser_in",
                                                           "denoiser_out")), key=lambda p: p.order)
        for p in path[:k]:  # before the cut: in the graph, no gradient arrives
            p.reached, p.norm, p.max_abs = False, None, None
        p = path[k]  # the cut: not in the graph
        p.requires_grad, p.reached, p.norm, p.max_abs = False, False, None, None
        assert isinstance(p, ProbeStats)
        return r

    a, b = cut_at(6), cut_at(3)
    from gradcheck.diff import compare_modes

    md = compare_modes("m", a, b)
    assert md.break_change == "moved earlier" and md.worse
    assert compare_modes("m", b, a).break_change == "moved later"


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    assert main(["diff", str(runs["ok"]), str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert "cannot read report" in err and len(err.strip().splitlines()) == 1
    opt = tmp_path / "opt.json"  # an optimize record's tool name, not a run's
    opt.write_text(json.dumps({"tool": "gradcheck-optimize"}))
    assert main(["diff", str(runs["ok"]), str(opt)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["diff", str(runs["ok"]), str(runs["cut"]), "--out", str(blocker / "d")]) == 1
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and len(err.strip().splitlines()) == 1


def test_runs_of_another_configuration_are_flagged_and_only_changes_are_listed(tmp_path):
    """Issue 30, item 12: a 4-step 2ab run against a 35-step 2mid run warns that the runs
    differ; the page lists the changed probes only; info -> FAIL is worse; lines are cut at a
    word, never mid-word."""
    from gradcheck.diff import RunDiff, CheckChange, ModeDiff
    from gradcheck.report.render import render_diff

    golden = Path(__file__).parent / "golden"
    a, b = load_record(golden / "run_2ab_4.json"), load_record(golden / "run_2mid_35.json")
    d = compare(a, b)
    assert any(x.startswith("solver 2ab vs 2mid") for x in d.config_differs), d.config_differs
    assert any(x.startswith("steps 4 vs 35") for x in d.config_differs)
    lines = d.lines()
    assert lines[2].startswith("warning: the runs differ in configuration (solver 2ab vs 2mid")
    same = compare(a, a)
    assert same.config_differs == [] and not any("warning" in x for x in same.lines())
    out = tmp_path / "d"
    render_diff(d, out)
    page = (out / "index.html").read_text()
    assert "The runs differ in configuration" in page
    m = d.modes[0]
    rows = page.split('data-mode="' + m.mode + '"')[1].split("</section>")[0].count("<tr><td>")
    assert rows == len(m.changed_probes())
    worse = CheckChange("loss_moves", "info", "FAIL", "x " * 200, worse=True)
    text = RunDiff("A", "B", modes=[ModeDiff("default", True, False, checks=[worse])]).lines()
    line = next(x for x in text if "loss_moves" in x)
    assert "(worse)" in line and line.endswith(" ...") and not line.endswith("x ...x")
    import dataclasses

    from gradcheck.diff import compare_modes

    ra = a.modes["default"]
    info = next(f for f in ra.checks if f.level == "info")
    rb = dataclasses.replace(ra, checks=[dataclasses.replace(f, level="error", passed=False)
                                         if f is info else f for f in ra.checks])
    (flip,) = compare_modes("default", ra, rb).checks
    assert (flip.a, flip.b, flip.worse) == ("info", "FAIL", True)
