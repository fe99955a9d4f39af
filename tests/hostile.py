"""A corpus of hostile report.json files, made from real records: markup in every string field
and every key, values of the wrong type, bare NaN, absurd nesting and sizes, mode names that are
paths, stored verdicts that lie. Each case says whether gradcheck must refuse it (one line, exit
1, naming what is wrong) or render it inert."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

GOLDEN = Path(__file__).parent / "golden"
#: markup, script, event handlers, a javascript: URL, a DOT attribute break-out, a terminal escape
PAYLOAD = ('<img src=x onerror=alert(1)>"\'><script>alert(2)</script><svg onload=alert(3)>'
           '" URL="javascript:alert(4)" x="\x1b[2J\x1b]0;pwned\x07')


def passing_run() -> dict[str, Any]:
    return json.loads((GOLDEN / "run_2ab_4.json").read_text())


def failing_run() -> dict[str, Any]:
    """A report.json around a located detach (a FlowReport golden of the fault catalogue)."""
    run = passing_run()
    flow = json.loads((GOLDEN / "fault_detach.json").read_text())
    run["modes"] = {"default": flow}
    return run


def _markup_everywhere(x: Any) -> Any:
    """Every string, and every key that is not a record field's name (mode names, configuration
    keys), with the payload added."""
    if isinstance(x, dict):
        if set(x) == {"$float"}:
            return x
        return {(k if k in _FIELDS else k + PAYLOAD): _markup_everywhere(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_markup_everywhere(v) for v in x]
    if isinstance(x, str):
        return x + PAYLOAD
    return x


def _field_names() -> set[str]:
    import dataclasses

    from gradcheck import records

    out = set()
    for obj in vars(records).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            out |= {f.name for f in dataclasses.fields(obj)}
    return out | {"$float"}


_FIELDS = _field_names()


def markup_everywhere() -> dict[str, Any]:
    d = _markup_everywhere(passing_run())
    d["tool"], d["schema_version"] = "gradcheck", passing_run()["schema_version"]
    return d


def _probe(d: dict[str, Any], **change: Any) -> dict[str, Any]:
    next(iter(d["modes"].values()))["probes"][0].update(change)
    return d


def _check(d: dict[str, Any], **change: Any) -> dict[str, Any]:
    next(iter(d["modes"].values()))["checks"][0].update(change)
    return d


def _nest(depth: int) -> str:
    return '{"tool": "gradcheck", "config": ' + "[" * depth + "]" * depth + "}"


def _many_modes(d: dict[str, Any]) -> dict[str, Any]:
    one = next(iter(d["modes"].values()))
    d["modes"] = {f"m{i}": one for i in range(300)}
    return d


def _renamed(d: dict[str, Any], name: str) -> dict[str, Any]:
    d["modes"] = {name: next(iter(d["modes"].values()))}
    return d


@dataclass
class Case:
    name: str
    make: Callable[[], Any]  # a dict (dumped as JSON) or the file's text
    refused: str | None  # the words of the one-line refusal; None: rendered inert

    def text(self) -> str:
        x = self.make()
        return x if isinstance(x, str) else json.dumps(x)


CASES = [
    Case("markup in every string and key", markup_everywhere, None),
    Case("probe order is markup", lambda: _probe(passing_run(), order='1"><img src=x onerror=alert(3)>'),
         "probes[0].order: expected an integer, got a string"),
    Case("probe step is a float", lambda: _probe(passing_run(), step=1.5),
         "probes[0].step: "),
    Case("a check passed 'no'", lambda: _check(passing_run(), passed="no"),
         "checks[0].passed: expected true or false, got a string"),
    Case("a boolean where an integer belongs", lambda: _probe(passing_run(), order=True),
         "expected an integer, got a boolean"),
    Case("tagged NaN in an integer field", lambda: _probe(passing_run(), order={"$float": "NaN"}),
         "expected an integer, got an object"),
    Case("bare NaN", lambda: json.dumps(passing_run()).replace('"norm": 0.', '"norm": NaN, "x": 0.', 1),
         "a bare NaN"),
    Case("bare Infinity", lambda: json.dumps(passing_run()).replace('"sigma": 80.0', '"sigma": Infinity', 1),
         "a bare Infinity"),
    Case("nested 100,000 deep", lambda: _nest(100_000), "nested deeper than"),
    Case("nested 40 deep", lambda: _nest(40), "nested deeper than 32 levels"),
    Case("300 modes", lambda: _many_modes(passing_run()), "300 modes, more than the 64"),
    Case("a string of a million characters",
         lambda: _probe(passing_run(), name="x" * 1_000_000), "a string of 1,000,000 characters"),
    Case("not JSON", lambda: "{'tool': 'gradcheck'", "not JSON"),
    Case("a list", lambda: "[1, 2, 3]", "not a report.json"),
    Case("another tool", lambda: {"tool": "<b>evil</b>"}, "not a report.json"),
    Case("no modes", lambda: {**passing_run(), "modes": {}}, "no modes"),
    Case("a mode named like a path", lambda: _renamed(passing_run(), "/../../pwned"), None),
    Case("a mode named '..'", lambda: _renamed(passing_run(), ".."), None),
    Case("a mode named with markup and escapes", lambda: _renamed(passing_run(), PAYLOAD), None),
]


def stored_verdict_lies() -> dict[str, Any]:
    """A failing run whose every stored check says PASS."""
    d = failing_run()
    for c in d["modes"]["default"]["checks"]:
        c["passed"] = True
    return d


def no_checks() -> dict[str, Any]:
    d = failing_run()
    d["modes"]["default"]["checks"] = []
    return d


