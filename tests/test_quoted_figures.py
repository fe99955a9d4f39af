"""Every figure the README and benchmarks/README.md quote from a benchmark is tagged with the results
file it comes from, and must equal that file's value as formatted:

    ... renders in 1.29 s<!-- q report_render rows.0.render_s.median .2f --> ...

``rows.0.x`` indexes a list; ``rows.mode=default&checks=quick.x`` picks the first element whose
fields match; ``a.x/a.y`` quotes a ratio of two values of the file (a share, a mean). The number right before the tag (a unit of up to a few characters may sit between)
is compared with ``format(value, spec)``. A benchmark rerun that changes a figure fails here until
the text is updated: the README cannot drift from the numbers it cites."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
TAG = re.compile(r"(-?[\d][\d,]*(?:\.\d+)?)([^\d<]{0,6})<!--\s*q\s+(\S+)\s+(\S+)\s+(\S+)\s*-->")


def _lookup(data, path: str):
    for seg in path.split("."):
        if isinstance(data, list):
            if "=" in seg:
                conds = dict(c.split("=", 1) for c in seg.split("&"))
                data = next(x for x in data if all(str(x.get(k)) == v for k, v in conds.items()))
            else:
                data = data[int(seg)]
        else:
            data = data[seg]
    return data


def _quotes():
    out = []
    for doc in DOCS:
        for m in TAG.finditer(doc.read_text()):
            out.append((doc.name, *m.groups()))
    return out


def test_the_readmes_quote_benchmark_files():
    names = {name for _, _, _, name, _, _ in _quotes()}
    # the figures of these benchmarks are quoted, each from its results file
    assert {"report_render", "verdict_cost"} <= names, names


@pytest.mark.parametrize("doc,text,unit,name,path,spec", _quotes(),
                         ids=lambda x: x if isinstance(x, str) and len(x) < 40 else None)
def test_a_quoted_figure_equals_its_results_file(doc, text, unit, name, path, spec):
    f = ROOT / "benchmarks" / "results" / f"{name}.json"
    assert f.exists(), f"{doc} quotes {name}, but benchmarks/results/{name}.json is missing"
    data = json.loads(f.read_text())["results"]
    num, _, den = path.partition("/")
    value = _lookup(data, num) / _lookup(data, den) if den else _lookup(data, num)
    want = format(value, spec.replace("_", ","))
    if spec.endswith("%"):  # the % sign is the unit beside the number
        want = want[:-1]
    assert text == want, f"{doc} says {text}{unit} but {name}.json {path} is {want}"
