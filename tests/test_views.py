"""The report's own views, as geometry and data: no edge of the step chain passes through a node
(or a row's label), rows run top to bottom in step order, the op views lay every op out once
without overlap, and the failing page names every grad-disabling site with the fix."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradcheck.report import load_record
from gradcheck.report import views
from gradcheck.report import layout, opviews
from gradcheck.report.layout import NODE_H, NODE_W, OP_H, OP_W
from gradcheck.report.shapes import markup

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).parent.parent


def _bezier(p0, p1, p2, p3, n=24):
    for i in range(n + 1):
        t = i / n
        yield tuple((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c + t ** 3 * d
                    for a, b, c, d in zip(p0, p1, p2, p3))


def _points(d: str):
    """Points along an SVG path of M, L and C commands (absolute)."""
    toks = re.findall(r"([MLC])([^MLC]*)", d)
    cur = None
    for cmd, args in toks:
        nums = [float(x) for x in re.findall(r"-?[\d.]+", args)]
        pts = list(zip(nums[::2], nums[1::2]))
        if cmd == "M":
            cur = pts[0]
            yield cur
        elif cmd == "L":
            for p in pts:
                for i in range(1, 25):
                    yield (cur[0] + (p[0] - cur[0]) * i / 24, cur[1] + (p[1] - cur[1]) * i / 24)
                cur = p
        else:
            for k in range(0, len(pts), 3):
                yield from _bezier(cur, *pts[k:k + 3])
                cur = pts[k + 2]


@pytest.mark.parametrize("name", ["run_2ab_4.json", "run_2mid_35.json", "run_all_modes.json",
                                  "fault_detach.json"])
def test_no_chain_edge_crosses_a_node(name):
    if name.startswith("fault_"):  # a FlowReport of its own
        import json

        from gradcheck.records import FlowReport

        modes = {"fault": FlowReport.from_dict(json.loads((GOLDEN / name).read_text()))}
    else:
        modes = load_record(GOLDEN / name).modes
    for mode, r in modes.items():
        ch = layout.chain(r)
        svg = str(markup(views.chain_view(r, ch)))
        rects = {o: (x, y, x + NODE_W, y + NODE_H) for o, (x, y) in ch["pos"].items()}
        edges = re.findall(r'<path class="(?:e [^"]*|break-edge)" d="([^"]+)"', svg)
        assert len(edges) >= len([e for e in ch["edges"] if e[2] != "stub"])
        for d in edges:
            pts = list(_points(d))
            for o, (x0, y0, x1, y1) in rects.items():
                inside = [p for p in pts if x0 + 2 < p[0] < x1 - 2 and y0 + 2 < p[1] < y1 - 2]
                assert not inside, f"{name} {mode}: edge {d} runs through probe {o}"
        # rows top to bottom in step order, one per step
        rows = [name for name, _ in ch["rows"]]
        steps = [int(s) for s in rows if s not in ("start", "end")]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        ys = {o: y for o, (_, y) in ch["pos"].items()}
        for p in r.probes:
            if p.step is not None and p.order in ys:
                assert ys[p.order] == 16 + rows.index(str(p.step)) * layout.ROW_H
        # nothing is drawn over the row labels on the left
        for o, (x0, _, _, _) in rects.items():
            assert x0 >= ch["label_w"]


def test_op_views_place_every_op_once_without_overlap():
    rec = load_record(GOLDEN / "run_2ab_4.json")
    r = rec.modes["default"]
    strings: dict[str, int] = {}
    v = opviews.op_views(r, strings)
    n_ops = sum(len(reg.ops) for reg in r.graph.regions)
    drawn = sum(1 for view in v.values() for nd in view["n"] if nd[2] != -2)
    assert drawn == n_ops
    for key, view in v.items():
        boxes = [(nd[0], nd[1]) for nd in view["n"]]
        assert len(set(boxes)) == len(boxes), f"step {key}: two nodes at one place"
        for (x, y) in boxes:
            assert x >= 0 and y >= 0 and x + OP_W <= view["w"] and y + OP_H <= view["h"]
        # edges go down: forward order is top to bottom (layered layout)
        for a, b, _, pts in view["e"]:
            assert view["n"][a][1] < view["n"][b][1], f"step {key}: edge {a}->{b} goes up"


def test_ops_without_op_detail_are_not_recorded_never_unreached():
    """A passing run whose op detail was not kept (too many ops for 'auto', or 'never'): its ops
    have no |g|, which is 'not recorded', never the hatching that means no gradient arrived."""
    import dataclasses

    rec = load_record(GOLDEN / "run_2ab_4.json")
    r = rec.modes["default"]
    g = dataclasses.replace(r.graph, regions=[dataclasses.replace(reg, grads=None, where=None)
                                              for reg in r.graph.regions],
                            detail=False, detail_skipped="the forward pass made more than "
                            "20,000 torch calls (op_detail='auto')")
    r = dataclasses.replace(r, graph=g)
    assert r.passed
    v = opviews.op_views(r, {})
    statuses = {nd[5] for view in v.values() for nd in view["n"] if nd[2] != -2}
    assert statuses == {"no_detail"}, statuses
    assert "not a break" in opviews.OP_WORDS["no_detail"]
    assert all(e[2] == 0 for view in v.values() for e in view["e"])  # no stop drawn


def test_the_break_panel_names_every_grad_disabling_site_and_the_fix(tmp_path):
    out = tmp_path / "cosmos"
    res = subprocess.run([sys.executable, "-m", "gradcheck", "run", "--sampler",
                          "tests.cosmos_replica:factory", "--convention", "cosmos", "--denoiser",
                          "gaussian", "--steps", "3", "--optim-steps", "0", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    html = (out / "index.html").read_text()
    box = html.split('<div class="breakbox"')[1].split("</div>\n  \n")[0]
    sites = re.findall(r"<li>(.*?)</li>", box.split('<ul class="sites">')[1].split("</ul>")[0])
    assert len(sites) >= 2 and all("no_grad" in s for s in sites[:2]), sites
    assert "Sampler.forward" in sites[0] and "_forward_impl" in " ".join(sites)
    assert "Fix:</strong> remove the @torch.no_grad()" in box
    assert 'class="ln hl"' in box  # the user's line, highlighted in its source


def test_one_place_draws_and_one_rule_escapes():
    """Every drawing is a tree of nodes turned into markup by shapes.markup, which escapes every
    text and attribute value with markupsafe (the templates' own rule) and refuses any tag or
    attribute name that is not a plain XML name; no other module writes a tag, and the page's
    script draws nothing (no createElementNS, no innerHTML)."""
    import ast

    from gradcheck.report.shapes import el

    hostile = '"><script>alert(1)</script>&'
    out = str(markup(el("g", el("title", text=hostile), el("text", text=hostile),
                        data_name=hostile, class_="node")))
    assert "<script>" not in out and hostile not in out
    assert out.count("&lt;script&gt;") == 3 and '&#34;&gt;' in out and "&amp;" in out
    assert out.startswith('<g data-name="') and out.endswith("</text></g>")
    for bad in (lambda: el("script"), lambda: el("g", **{"on" + "load=x y": 1}),
                lambda: el("g", **{"a b": 1})):
        with pytest.raises(ValueError):
            markup(bad())
    root = ROOT / "gradcheck"
    tag = re.compile(r"<\s*/?\s*(svg|g|rect|text|path|line|title|div|span|p|script|template)\b")
    writers = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "shapes.py":
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in docs and tag.search(node.value):
                writers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not writers, f"markup written outside report/shapes.py: {writers}"
    js = (root / "report" / "templates" / "_report.js").read_text()
    assert "createElementNS" not in js and "innerHTML" not in js and "insertAdjacentHTML" not in js
