"""The HTML/PNG/graph report: opened in headless Chromium, plot data, escaping, re-rendering
without torch, no Graphviz, atomic writes."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gradcheck.report.staging import MANIFEST
import torch

import gradcheck
from gradcheck.cli import main
from gradcheck.records import RunRecord
from gradcheck.report import load_record
from gradcheck.report import plots
from gradcheck.report.dot import step_graph_dot
from gradcheck.report.render import render
from gradcheck.runner import environment
from gradcheck.sampling import GaussianDenoiser, SamplerConfig, sample_res

from .browser import Page, chromium_path
from .conftest import z0_like

EVIL = "<script>alert(1)</script>"


def need_chromium():
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (.ci/run installs it)")
        pytest.skip("chromium not installed")


def need_dot():
    if shutil.which("dot") is None:
        if os.environ.get("CI"):
            pytest.fail("graphviz must be installed in CI (.ci/run installs it)")
        pytest.skip("graphviz not installed")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--out", str(out)]) == 0
    return out


def _record(rep, **config) -> RunRecord:
    cfg = {"sampler": {"solver": "1euler", "steps": 4}, "denoiser": "test", "seed": 0,
           "dtype": "float64", "z0_shape": [2, 1, 8, 8], **config}
    return RunRecord(config=cfg, environment=environment("float64", torch.device("cpu")),
                     modes={rep.mode: rep})


@pytest.fixture(scope="module")
def broken_record() -> RunRecord:
    """1euler on the Gaussian oracle with the state detached after step 1, and an evil probe."""
    den = GaussianDenoiser(0.1, 0.5)
    sig = SamplerConfig(solver="1euler", steps=4).sigmas()

    def sample(z):
        def cb(d):
            gradcheck.probe(d["denoised"], EVIL, step=d["i"], kind="custom")
            return d["x"].detach() if d["i"] == 1 else None
        return sample_res(gradcheck.instrument(den), 80.0 * z, sig, solver="1euler", callback=cb)

    rep = gradcheck.diagnose(sample, z0_like(), mode="default")
    assert not rep.passed
    return _record(rep)


def test_run_writes_every_file(run_dir):
    names = set(os.listdir(run_dir))
    for mode in ("default", "learnable_step_noise"):
        assert {f"graph_{mode}.dot", f"autograd_{mode}.dot"} <= names
        if shutil.which("dot"):
            assert {f"graph_{mode}.svg", f"graph_{mode}.png", f"autograd_{mode}.svg"} <= names
    assert {"report.json", "index.html", "grad_per_step.png"} <= names
    assert not [n for n in names if n.startswith(".") and n != MANIFEST]  # no temp files left


def test_html_is_self_contained(run_dir):
    html = (run_dir / "index.html").read_text()
    assert "<link" not in html
    # scripts are inline: the page's data and its code, nothing loaded from anywhere
    assert re.findall(r"<script[^>]*>", html) == ['<script type="application/json" id="gc-data">',
                                                  "<script>"]
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:") for s in srcs)
    assert not re.search(r"https?://", html.split("<footer")[0].replace("http://www.w3.org", ""))
    assert "fetch(" not in html and "XMLHttpRequest" not in html and "import(" not in html


def test_html_in_chromium_shows_every_section_without_errors(run_dir, tmp_path):
    need_chromium()
    need_dot()
    with Page(width=1400, height=900) as page:
        page.goto(run_dir / "index.html")
        sections = page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)")
        text = page.evaluate("document.body.innerText")
        images = page.evaluate("[...document.images].map(i => [i.alt, i.naturalWidth])")
        views = page.evaluate("[...document.querySelectorAll('svg.heatmap, svg.chain')]"
                              ".map(s => s.getBoundingClientRect().height > 50)")
        shot = page.screenshot(tmp_path / "report.png")
        errors = page.errors()
    assert errors == []
    assert sections == ["verdict", "overview", "checks", "locate", "samples", "step-graph",
                        "per-step", "probes", "config", "environment", "timings"]
    assert "default: PASS" in text and "learnable_step_noise: PASS" in text
    assert "grad_reaches_z0" in text and "numeric_directional" in text
    assert len(images) == 2 and all(w > 100 for _, w in images), images  # plot, samples
    assert views == [True] * 4  # a heat map and a step chain per mode, drawn
    from PIL import Image, ImageStat

    im = Image.open(shot).convert("L")
    assert im.size[0] == 1400 and im.size[1] > 2000
    assert ImageStat.Stat(im).stddev[0] > 20  # not blank


def test_plot_has_a_series_per_kind_and_mode(run_dir):
    rec = load_record(run_dir / "report.json")
    fig = plots.grad_figure(rec)
    by_panel = {ax.get_title(): {ln.get_label() for ln in ax.get_lines()} for ax in fig.axes
                if ax.get_title()}
    for kind in ("state x_i", "denoiser input", "denoiser output", "z0"):
        # the panel's title names the mode; the legend does not repeat it
        assert kind in by_panel["mode default"] and kind in by_panel["mode learnable_step_noise"]
    assert "step noise" in by_panel["mode learnable_step_noise"]
    assert "step noise" not in by_panel["mode default"]
    # z0 is drawn, left of step 0, at its |g|
    for ax in fig.axes:
        for ln in ax.get_lines():
            if ln.get_label() == "z0":
                z = next(p for p in rec.modes[ax.get_title()[5:]].probes if p.kind == "z0")
                assert list(ln.get_xdata()) == [-1] and ln.get_ydata()[0] == pytest.approx(z.norm)
    s = plots.plot_series(rec.modes["learnable_step_noise"])
    assert [x for x, _ in s.lines["state"]] == [0, 1, 2, 3, 4]
    assert [x for x, _ in s.lines["step_noise"]] == [0, 1, 2, 3]
    assert s.break_x is None and not s.unreached
    assert s.sigmas[0] == pytest.approx(80.0)
    # the values are the recorded norms
    norms = {p.step: p.norm for p in rec.modes["learnable_step_noise"].probes if p.kind == "state"}
    assert dict(s.lines["state"])[3] == pytest.approx(norms[3])


def test_a_line_is_broken_where_a_probe_got_no_gradient(run_dir):
    import math

    rec = load_record(run_dir / "report.json")
    rep = rec.modes["default"]
    x2 = next(p for p in rep.probes if p.kind == "state" and p.step == 2)
    x2.reached, x2.norm, x2.max_abs = False, None, None  # step 2's state: no gradient
    s = plots.plot_series(rep)
    assert s.gaps["state"] == [2.0] and 2.0 not in [x for x, _ in s.lines["state"]]
    fig = plots.grad_figure(rec)
    ax = next(a for a in fig.axes if a.get_title() == "mode default")
    ln = next(ln for ln in ax.get_lines() if ln.get_label() == "state x_i")
    xs, ys = list(ln.get_xdata()), list(ln.get_ydata())
    assert xs == [0, 1, 2, 3, 4] and math.isnan(ys[2])  # the line stops at step 2
    assert all(not math.isnan(y) for i, y in enumerate(ys) if i != 2)


def test_a_broken_run_marks_the_break_and_the_unreached(broken_record, tmp_path):
    rep = broken_record.modes["default"]
    s = plots.plot_series(rep)
    assert s.break_x == pytest.approx(1.5)  # between D_out[1] (step 1) and x[2] (step 2)
    assert "x[2]@callback -> x[2]" in s.break_label
    assert {x for x, _ in s.unreached} >= {0.0, 1.0}
    fig = plots.grad_figure(broken_record)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert any(k.startswith("break (graph ends)") for k in lines)
    assert "no gradient" in lines and "z0: unreached" in lines
    # one mode takes the page's width
    assert fig.get_size_inches()[0] >= 11
    dot_src = step_graph_dot(rep)
    assert "BREAK: graph ends" in dot_src
    # the part of the graph cut off from the loss is still drawn (grey), from the probes
    names = {p.order: p.name for p in rep.probes}
    edges = {(names[a], names[b]) for a, b in rep.graph.edges}
    assert {("z0", "x_T"), ("x_T", "D_in[0]"), ("D_in[1]", "D_out[1]")} <= edges
    assert not any(names[b] in ("x[2]", "output") for _, b in rep.graph.edges)
    res = render(broken_record, tmp_path)
    html = (tmp_path / "index.html").read_text()
    assert "default: FAIL" in html and "the autograd graph ends between x[2]@callback" in html


def test_probe_names_are_escaped(broken_record, tmp_path):
    render(broken_record, tmp_path)
    html = (tmp_path / "index.html").read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    dot_src = (tmp_path / "graph_default.dot").read_text()
    assert f'label="{EVIL}\\n' in dot_src  # a DOT string; Graphviz escapes it in the SVG
    if shutil.which("dot"):
        svg = (tmp_path / "graph_default.svg").read_text()
        assert EVIL not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    if chromium_path() is None:
        pytest.skip("chromium not installed")
    with Page() as page:
        page.goto(tmp_path / "index.html")
        text = page.evaluate("document.body.innerText")
        injected = page.evaluate("window.__evil === undefined && !document.querySelector("
                                 "'body script:not(#gc-data):not(:last-of-type)')")
        page.evaluate("document.getElementById('gc-search').value = ''")
        page.type_text("#gc-search", "script>alert")
        results = page.evaluate("document.getElementById('gc-results').innerText")
        errors = page.errors()
    assert EVIL in text and injected and errors == []
    assert "probe <script>alert(1)</script>" in results  # found, shown as text


NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("importing torch is blocked in this test")
sys.meta_path.insert(0, Block())
from gradcheck.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


def _scrub(html: str) -> str:
    return re.sub(r'<span class="ts">[^<]*</span>', "", html)


def test_report_rerenders_the_same_html_without_torch(run_dir, tmp_path):
    out = tmp_path / "again"
    res = subprocess.run([sys.executable, "-c", NO_TORCH, "report", str(run_dir / "report.json"),
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _scrub((out / "index.html").read_text()) == _scrub((run_dir / "index.html").read_text())
    assert (out / "grad_per_step.png").read_bytes() == (run_dir / "grad_per_step.png").read_bytes()


def test_report_on_a_bad_path_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert "cannot read report" in err and len(err.strip().splitlines()) == 1


def _path_without_dot(tmp_path: Path) -> str:
    """PATH with every directory that holds 'dot' replaced by a copy without it."""
    parts = []
    for i, d in enumerate(os.environ["PATH"].split(os.pathsep)):
        if d and os.path.exists(os.path.join(d, "dot")):
            shadow = tmp_path / f"bin{i}"
            shadow.mkdir()
            for name in os.listdir(d):
                if name != "dot" and not name.startswith("dot"):
                    try:
                        os.symlink(os.path.join(d, name), shadow / name)
                    except OSError:
                        pass
            parts.append(str(shadow))
        else:
            parts.append(d)
    return os.pathsep.join(parts)


def test_without_dot_the_run_succeeds_and_says_how_to_get_graphs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _path_without_dot(tmp_path))
    assert shutil.which("dot") is None
    out = tmp_path / "r"
    assert main(["run", "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "install Graphviz" in printed
    html = (out / "index.html").read_text()
    assert html.count("install Graphviz to draw graphs") >= 2
    # the page's own views need no Graphviz: the overview and the step chains are there
    assert html.count('<svg class="heatmap"') == 2 and html.count('<svg class="chain"') == 2
    assert (out / "graph_default.dot").read_text().startswith("digraph")
    assert not list(out.glob("*.svg"))
    assert main(["run", "--steps", "3", "--graph", "always", "--out", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "Graphviz 'dot' binary is not on PATH" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2" / "report.json").exists()


def test_a_failure_mid_report_leaves_no_half_written_index(broken_record, tmp_path, monkeypatch):
    from gradcheck.report import render as render_mod

    def boom(r):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(render_mod.dot, "step_graph_dot", boom)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        render(broken_record, tmp_path / "new")
    assert not (tmp_path / "new" / "index.html").exists()
    monkeypatch.undo()
    render(broken_record, tmp_path / "old")
    before = (tmp_path / "old" / "index.html").read_bytes()
    monkeypatch.setattr(render_mod.dot, "step_graph_dot", boom)
    with pytest.raises(RuntimeError):
        render(broken_record, tmp_path / "old")
    assert (tmp_path / "old" / "index.html").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path / "old") if n.startswith(".") and n != MANIFEST]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no staging left


def test_raw_graph_above_the_cap_is_skipped_with_a_reason_and_linked(tmp_path, capsys):
    need_dot()
    out = tmp_path / "cap"
    assert main(["run", "--steps", "4", "--raw-graph-cap", "50", "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "whole op-level graph not kept:" in html and "autograd nodes &gt; cap 50" in html
    assert (out / "autograd_default.dot").read_text().startswith("digraph")
    assert not (out / "autograd_default.svg").exists()
    assert (out / "graph_default.svg").exists()


def test_35_steps_step_graph_renders(tmp_path):
    need_dot()
    assert main(["run", "--steps", "35", "--out", str(tmp_path)]) == 0
    svg = (tmp_path / "graph_default.svg").read_text()
    assert svg.count("cluster_") >= 36 or svg.count('class="cluster"') >= 36


def test_write_report_turns_your_own_diagnoses_into_the_same_report(tmp_path):
    import json

    import torch

    import gradcheck
    from gradcheck.sampling import GaussianDenoiser, ResSampler, SamplerConfig

    z0 = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    reps = [gradcheck.diagnose(ResSampler(GaussianDenoiser(), SamplerConfig(steps=2), mode=m),
                               z0, optim_steps=0) for m in ("default", "default")]
    index = gradcheck.write_report(reps, tmp_path / "mine", label="my sampler")
    assert index == tmp_path / "mine" / "index.html" and index.exists()
    rec = json.loads((tmp_path / "mine" / "report.json").read_text())
    assert list(rec["modes"]) == ["default", "default-2"]
    assert rec["config"]["sampler_description"] == "my sampler"
    assert "my sampler" in index.read_text()
    bad = tmp_path / "file"
    bad.write_text("x")
    with pytest.raises(gradcheck.OutputError):
        gradcheck.write_report(reps[0], bad / "sub")


def test_optimize_plots_say_what_they_plot_and_band_only_what_a_check_judges():
    data = {"result": {"objective": "class:3", "extra": {"class": 3}, "direction": "up",
                       "values": [-2.0, -1.0], "z_norms": [8.0, 8.1], "sqrt_d": 8.0, "batch": 4,
                       "checks": []}}
    assert plots.loss_curve_figure(data).axes[0].get_ylabel() == "mean log p(digit 3 | output)"
    data["result"].update(objective="diverge", extra={})
    assert plots.loss_curve_figure(data).axes[0].get_ylabel() == "MSE(output, baseline output)"
    ax = plots.z_norm_figure(data).axes[0]
    assert not ax.patches and len(ax.get_lines()) == 1  # no check judged the norm: no band
    data["result"]["checks"] = [{"name": "z0_plausible", "passed": True, "message": ""}]
    ax = plots.z_norm_figure(data).axes[0]
    assert len(ax.patches) == 1 and "z0_plausible" in ax.get_legend_handles_labels()[1][-1]


def test_configuration_and_timings_read_cleanly(run_dir, tmp_path):
    from gradcheck.cli import main as cli

    fresh = (run_dir / "index.html").read_text()
    assert cli(["report", str(run_dir / "report.json"), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "index.html").read_text()
    for html in (fresh, again):
        config = html.split('<section id="config">')[1].split("</section>")[0]
        rows = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", config))
        assert "sampler.s_churn" not in rows  # unset: the modes' own values stand in for it
        assert rows["sampler.s_churn (default)"] == "0"
        assert rows["sampler.s_churn (learnable_step_noise)"] == "40"
        assert not {"nproc", "parallel", "dist_timeout"} & set(rows)  # one process
        assert rows["sampler.s_max"] == "inf"  # the same word, fresh or read back from JSON
        assert "None" not in rows.values() and "Infinity" not in config
        timings = html.split('<section id="timings">')[1].split("</section>")[0]
        heads = re.findall(r'<th class="num">(\w+) \(s\)</th>', timings)
        if heads[0] == "setup":  # torch.optim's one-time set-up, paid by the first run of a process
            heads = heads[1:]
        assert heads[:3] == ["baseline", "forward", "backward"] and heads[-1] == "total"
        assert heads.index("numeric") < heads.index("optim")
