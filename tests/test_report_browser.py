"""The report driven in headless Chromium like a user would: click a step, hover an op, zoom, search;
a failing run opens on its break; the page reads with JavaScript off; 4, 35 and 200 steps render
(screenshots are kept in ``$GRADCHECK_SHOTS`` when set, to be looked at)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import gradcheck
from gradcheck.cli import main
from gradcheck.sampling import SamplerConfig, build_denoiser, sample_res

from .browser import Page
from .test_report import need_chromium

SHOTS = os.environ.get("GRADCHECK_SHOTS")


def _keep(path: Path, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)


def _not_blank(png: Path, min_h: int) -> None:
    from PIL import Image, ImageStat

    im = Image.open(png).convert("L")
    assert im.size[1] >= min_h and ImageStat.Stat(im).stddev[0] > 20


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run4")
    assert main(["run", "--out", str(out)]) == 0
    return out


def test_clicking_a_step_opens_its_op_graph_with_grad_and_source_on_hover(run4, tmp_path):
    need_chromium()
    with Page(width=1400, height=1000) as page:
        page.goto(run4 / "index.html")
        assert page.evaluate("document.documentElement.dataset.ready") == "1"
        # nothing open yet on a passing run
        assert page.evaluate("document.querySelector('.op-box').hidden") is True
        page.click('.mode-graph[data-mode="default"] svg.chain .node[data-step="2"][data-kind="denoiser_out"]')
        head = page.evaluate("document.querySelector('.mode-graph[data-mode=\"default\"] .ophead').innerText")
        n_ops = page.evaluate("document.querySelectorAll('.mode-graph[data-mode=\"default\"] .op-box .on.op').length")
        row_open = page.evaluate("document.querySelector('.mode-graph[data-mode=\"default\"] .row.open').dataset.step")
        # hover an op: its |g| and its source line
        page.hover('.mode-graph[data-mode="default"] .op-box .on.op:nth-of-type(5)')
        info = page.evaluate("document.querySelector('.mode-graph[data-mode=\"default\"] .opinfo').innerText")
        # zoom in with the button, then fit the width again
        z0 = float(page.evaluate("document.querySelector('.chain-box').dataset.zoom"))
        page.click('.mode-graph[data-mode="default"] .pane .tools button[data-act="zoom-in"]')
        z1 = float(page.evaluate("document.querySelector('.chain-box').dataset.zoom"))
        page.click('.mode-graph[data-mode="default"] .pane .tools button[data-act="fit-width"]')
        z2 = float(page.evaluate("document.querySelector('.chain-box').dataset.zoom"))
        # opening other steps reuses the op view's viewer: one zoom click zooms once
        page.click('.mode-graph[data-mode="default"] svg.chain .node[data-step="3"][data-kind="state"]')
        page.click('.mode-graph[data-mode="default"] svg.chain .node[data-step="1"][data-kind="state"]')
        sel = '.mode-graph[data-mode="default"] .op-box'
        o0 = float(page.evaluate(f"document.querySelector('{sel}').dataset.zoom"))
        page.click('.mode-graph[data-mode="default"] .opview .tools button[data-act="zoom-in"]')
        o1 = float(page.evaluate(f"document.querySelector('{sel}').dataset.zoom"))
        shot = page.screenshot(tmp_path / "step2.png", full_page=False)
        errors = page.errors()
    assert errors == []
    assert o1 / o0 == pytest.approx(1.4, rel=0.02), (o0, o1)
    assert head.startswith("step 2:") and "ops between" in head
    assert n_ops >= 30 and row_open == "2"
    assert "|g| " in info and ".py:" in info, info
    assert z1 > z0 * 1.3 and z2 == pytest.approx(z0, rel=1e-3)
    _not_blank(shot, 900)
    _keep(shot, "step2_open.png")


def test_search_finds_ops_by_name_and_line_and_opens_their_step(run4):
    need_chromium()
    with Page(width=1400, height=1000) as page:
        page.goto(run4 / "index.html")
        page.type_text("#gc-search", "Convolution")
        results = page.evaluate("[...document.querySelectorAll('#gc-results a')].map(a => a.innerText)")
        page.click("#gc-results a")
        matches = page.evaluate("document.querySelectorAll('.op-box .on.match').length")
        page.evaluate("document.getElementById('gc-search').value = ''")
        page.type_text("#gc-search", "D_out[3]")
        probe_hits = page.evaluate("document.querySelectorAll('svg.chain .node.match').length")
        errors = page.errors()
    assert errors == []
    # every denoiser call of both modes, 5 steps each (4 + the final clean call)
    assert len(results) == 10 and all("op(s): Convolution" in r for r in results), results
    assert matches >= 5
    assert probe_hits == 2  # one per mode


def _detached(steps: int):
    den = build_denoiser("conv")  # sample_res probes every denoiser call itself
    sig = SamplerConfig(steps=steps).sigmas()

    def sample(z):
        def cb(d):
            if d["i"] == 2:
                return d["x"].detach()  # the fault the page must open on
        return sample_res(den, 80.0 * z, sig, solver="1euler", callback=cb)
    return sample


def test_a_failing_run_opens_on_the_break_with_source_and_fix(tmp_path):
    need_chromium()
    torch.manual_seed(0)
    rep = gradcheck.diagnose(_detached(4), torch.randn(1, 1, 8, 8), optim_steps=0)
    assert not rep.passed and rep.locator.primary.cause == "detach"
    index = gradcheck.write_report(rep, tmp_path / "broken", label="detached at step 2")
    html = index.read_text()
    assert "Fix:</strong> drop the .detach() here" in html
    with Page(width=1400, height=1000) as page:
        page.goto(index)
        opened = page.evaluate("document.querySelector('.opview').dataset.step")
        cut = page.evaluate("document.querySelectorAll('.op-box path.oe.cut').length")
        code = page.evaluate("document.querySelector('.breakbox pre.code .hl').innerText")
        shot = page.screenshot(tmp_path / "broken.png")
        errors = page.errors()
    assert errors == []
    assert opened == str(rep.locator.primary.step)
    assert cut == 1
    assert 'return d["x"].detach()' in code
    _not_blank(shot, 1500)
    _keep(shot, "broken.png")


def test_without_javascript_the_page_still_shows_overview_checks_and_graphs(run4, tmp_path):
    need_chromium()
    with Page(width=1400, height=1000) as page:
        page.without_javascript()
        page.goto(run4 / "index.html")
        ready = page.evaluate("document.documentElement.dataset.ready || null")
        shown = page.evaluate(
            "[...document.querySelectorAll('svg.heatmap, svg.chain, #checks table')]"
            ".map(e => e.getBoundingClientRect().height > 40)")
        search_hidden = page.evaluate(
            "getComputedStyle(document.querySelector('.search')).display === 'none'")
        # the whole chain is reachable (the box scrolls, nothing is cut off)
        chain_h = page.evaluate("document.querySelector('svg.chain').getBoundingClientRect().height")
        box_scroll = page.evaluate("document.querySelector('.chain-box').scrollHeight")
    # Runtime.evaluate runs even with page scripts off; the page's own script did not
    assert ready is None
    assert shown == [True] * 5 and search_hidden
    assert box_scroll >= chain_h - 2


@pytest.mark.parametrize("steps", [35, 200])
def test_long_runs_render_every_step_and_open_any_step(steps, tmp_path):
    need_chromium()
    out = tmp_path / f"r{steps}"
    args = ["run", "--steps", str(steps), "--mode", "default", "--out", str(out),
            "--graph", "never"]
    if steps > 35:
        args += ["--no-numeric", "--optim-steps", "0"]
    t0 = time.perf_counter()
    assert main(args) == 0
    assert time.perf_counter() - t0 < 120
    size = (out / "index.html").stat().st_size
    assert size < (3 if steps <= 35 else 15) * 2**20
    with Page(width=1400, height=1000) as page:
        page.goto(out / "index.html")
        cells = page.evaluate("document.querySelectorAll('svg.heatmap rect.c[data-step]').length")
        rows = page.evaluate("document.querySelectorAll('svg.chain .row[data-step]').length")
        last = str(steps)
        page.evaluate(f"gcOpenStep('default', '{last}')")
        head = page.evaluate("document.querySelector('.ophead').innerText")
        # a click on the heat map opens that step
        page.click(f'svg.heatmap rect.c[data-step="{steps // 2}"]')
        head2 = page.evaluate("document.querySelector('.ophead').innerText")
        page.evaluate("document.getElementById('overview').scrollIntoView()")
        shot = page.screenshot(tmp_path / f"overview{steps}.png", full_page=False)
        errors = page.errors()
    assert errors == []
    assert rows == steps + 1  # steps 0..N (the last is the final clean denoiser call)
    assert cells >= 3 * (steps + 1) - 1
    assert head.startswith(f"step {last}:") and head2.startswith(f"step {steps // 2}:")
    _not_blank(shot, 900)
    _keep(shot, f"overview_{steps}.png")


def test_pages_of_runs_that_raise_or_fail_unlocated_open_cleanly(tmp_path):
    """A sampler that raises has no graph; a cut the locator was not asked to name opens on the
    step the break point lies in."""
    need_chromium()
    sampler = _detached(3)

    def raises(z):
        raise ValueError("boom in the user's sampler")

    raised = gradcheck.diagnose(raises, torch.randn(1, 1, 8, 8))
    unlocated = gradcheck.diagnose(sampler, torch.randn(1, 1, 8, 8), locate="never",
                                   optim_steps=0)
    assert not raised.passed and not unlocated.passed and unlocated.locator is None
    pages = {"raised": gradcheck.write_report(raised, tmp_path / "raised"),
             "unlocated": gradcheck.write_report(unlocated, tmp_path / "unlocated")}
    with Page() as page:
        page.goto(pages["raised"])
        text = page.evaluate("document.body.innerText")
        e1 = page.errors()
    with Page() as page:
        page.goto(pages["unlocated"])
        opened = page.evaluate("document.querySelector('.opview').dataset.step")
        e2 = page.errors()
    assert e1 == [] and e2 == []
    assert "boom in the user's sampler" in text
    assert opened in ("2", "3")  # the cut after step 2's state


def test_ops_that_read_weights_only_are_pale_and_never_a_red_stop(tmp_path):
    """A model whose weights require grad (a diffusers UNet's do), with a sigma embedding: in
    the op view the embedding's ops are 'not asked' (pale, said so in the header and on hover),
    and no edge is drawn as a stop on this healthy run."""
    need_chromium()
    from gradcheck.report.render import render

    from .test_opdetail import _emb_run
    from .test_report import _record

    rep = _emb_run()
    assert rep.passed
    out = tmp_path / "r"
    out.mkdir()
    render(_record(rep, dtype="float64", z0_shape=[3, 8]), out, graphs="never")
    with Page(width=1400, height=900) as page:
        page.goto(out / "index.html")
        mode = rep.mode
        page.click(f'.mode-graph[data-mode="{mode}"] svg.chain .node[data-step="0"]'
                   f'[data-kind="denoiser_out"]')
        sel = f'.mode-graph[data-mode="{mode}"]'
        head = page.evaluate(f"document.querySelector('{sel} .ophead').innerText")
        pale = page.evaluate(f"document.querySelectorAll('{sel} .op-box .on.op.not_asked').length")
        stops = page.evaluate(f"document.querySelectorAll('{sel} .op-box path.oe.stops').length")
        grey = page.evaluate(f"document.querySelectorAll('{sel} .op-box path.oe.none').length")
        tip = page.evaluate(f"document.querySelector('{sel} .op-box .on.op.not_asked')"
                            f".querySelector('title').textContent")
        shot = page.screenshot(tmp_path / "weights_only.png", full_page=False)
        errors = page.errors()
    assert errors == []
    region = next(r for r in rep.graph.regions if r.weights and r.not_asked)
    assert pale == len(region.not_asked) and stops == 0
    assert grey >= pale  # the edges out of them carry no gradient: grey dashed
    assert f"{pale} read weights only" in head and "gradient stops" not in head
    assert "not asked for" in tip and "not a break" in tip
    _not_blank(shot, 800)
    _keep(shot, "weights_only.png")
