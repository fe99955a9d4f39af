"""Golden reports: regenerate a fixed set of ``report.json`` / ``optimize.json`` files and compare
them with the ones checked in under ``tests/golden/`` (timings and the environment ignored).

    .venv/bin/python scripts/golden.py            # regenerate and compare (exit 1 on a difference)
    .venv/bin/python scripts/golden.py --update   # write the current output as the new goldens
    .venv/bin/python scripts/golden.py --quick    # the 4-step subset only (what the suite runs)

The set: both default modes at 4 and 35 steps for each solver, ``--mode all``, one broken sampler
from the fault catalogue per fault kind, an adapter run (a k-diffusion-convention sampler) and
``gradcheck optimize`` at 5 iterations. A refactoring that keeps behaviour leaves them equal.

Differences the comparison forgives, each for a reason stated where it is listed (``FORGIVEN``):
a non-finite float is the same number whether written as the string ``"Infinity"`` (schema 1) or
as ``{"$float": "Infinity"}`` (schema 2); fields that only a later schema has are reported but
are not differences. Source line numbers (``file.py:123``, ``source_line``) and library paths
(``.../site-packages/``) are normalised before comparing: an edit above a line, or another
environment, moves them without changing what the report says.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

#: Keys never compared: they measure the machine, not the behaviour.
IGNORED_KEYS = {"timings", "environment", "seconds", "unit_s", "units", "total_units"}

#: Paths (dotted, list indices as *) whose value may differ from the golden, and why.
FORGIVEN: dict[str, str] = {
    "schema_version": "issue 11: records with one codec (non-finite floats as {'$float': ...})",
    "*graph.raw_dot": "issue 11: one DOT writer of ours replaces torchviz's op-level DOT "
                      "(the record keeps the op graph as data, graph.raw)",
}
#: Fields a later schema adds (reported as additions, never as differences).
ADDED: dict[str, str] = {
    "*graph.raw": "issue 11: the op-level graph as data (labels, edges), drawn by our writer",
    "*locator.internal_failures": "issue 11: the locator's own failures are counted",
    "*locator.failed_ops": "issue 11: ... with the ops it could not follow",
    "class_hits*": "issue 11: optimize.json is a record type (null where no class objective)",
    "result.checks*.value": "issue 26: optimize's checks are Findings (the value judged)",
    "result.checks*.threshold": "issue 26: ... (what it was judged against)",
    "result.checks*.step": "issue 26: ... (the iteration concerned)",
    "result.checks*.level": "issue 26: ... (error or warning, on every check)",
}


def _cli_cases(quick: bool) -> list[tuple[str, list[str]]]:
    cases = []
    for solver in ("2ab", "2mid", "1euler"):
        for steps in ((4,) if quick else (4, 35)):
            cases.append((f"run_{solver}_{steps}", ["run", "--solver", solver,
                                                    "--steps", str(steps)]))
    cases.append(("run_all_modes", ["run", "--mode", "all"]))
    cases.append(("adapter_kdiffusion", [
        "run", "--sampler", "tests.kdiff_like:euler_ancestral", "--unwrap", "--mode", "all",
        "--denoiser", "gaussian", "--shape", "1,4,4"]))
    return cases


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def generate(out: Path, quick: bool = False) -> list[str]:
    """Write every golden case's JSON into ``out``; returns the names."""
    import torch

    torch.set_num_threads(1)
    os.chdir(ROOT)  # locations in the reports are relative to the working directory
    sys.path.insert(0, str(ROOT))
    from gradcheck.cli import main

    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in _cli_cases(quick):
            d = Path(tmp, name)
            with _quiet():
                code = main([*argv, "--out", str(d), "--no-html"])
            if code not in (0, 2):
                raise SystemExit(f"golden case {name} exited {code}")
            (out / f"{name}.json").write_text((d / "report.json").read_text())
            names.append(name)
        if not quick:
            d = Path(tmp, "optimize")
            with _quiet():
                code = main(["optimize", "--iters", "5", "--steps", "6", "--batch", "4",
                             "--norm-reg", "none",
                             "--no-progress", "--out", str(d)])
            if code not in (0, 2):
                raise SystemExit(f"golden case optimize exited {code}")
            (out / "optimize.json").write_text((d / "optimize.json").read_text())
            names.append("optimize")
    names += _fault_cases(out)
    return names


def _fault_cases(out: Path) -> list[str]:
    """One broken sampler per fault kind (at its middle position where it has one)."""
    import torch

    from gradcheck.sampling import GaussianDenoiser
    from tests.faults import FAULTS, run_case

    den = GaussianDenoiser(0.1, 0.5)
    g = torch.Generator().manual_seed(11)
    z0 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    names = []
    for fault in FAULTS:
        pos = "middle" if "middle" in fault.positions else fault.positions[0]
        mode = "learnable_step_noise" if pos == "noise" else "default"
        with _quiet():
            rep, *_ = run_case(den, fault, pos, "2ab", mode, z0, target)
        name = f"fault_{fault.name}"
        (out / f"{name}.json").write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
        names.append(name)
    return names


#: source line numbers (``path.py:123``) and library paths (``.../site-packages/``) are where code
#: sits, not what the report says: an edit above a line, or another environment, moves them
_LINE = re.compile(r"(\.py):\d+")
_LIB = re.compile(r"[^\s'\"(]*(?:site|dist)-packages/")
#: fields that hold a source line number
LINE_KEYS = {"source_line"}


def _norm_text(s: str) -> str:
    return _LIB.sub("<lib>/", _LINE.sub(r"\1:<line>", s))


def _norm(x: Any) -> Any:
    """Non-finite floats in either encoding -> a canonical string; source line numbers and
    library paths -> placeholders; everything else as is."""
    if isinstance(x, dict):
        if set(x) == {"$float"}:
            return f"<float {x['$float']}>"
        return {k: ("<line>" if k in LINE_KEYS and isinstance(v, int) else _norm(v))
                for k, v in x.items() if k not in IGNORED_KEYS}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    if isinstance(x, str) and x in ("NaN", "Infinity", "-Infinity"):
        return f"<float {x}>"
    if isinstance(x, str):
        return _norm_text(x)
    if isinstance(x, float) and not math.isfinite(x):
        return f"<float {'NaN' if math.isnan(x) else ('Infinity' if x > 0 else '-Infinity')}>"
    return x


def _forgiven(path: str) -> str | None:
    import fnmatch

    for pat, why in {**FORGIVEN, **ADDED}.items():
        if fnmatch.fnmatch(path, pat):
            return why
    return None


def diff(a: Any, b: Any, path: str = "") -> tuple[list[str], list[str]]:
    """(differences, forgiven changes) between golden ``a`` and current ``b``."""
    bad: list[str] = []
    ok: list[str] = []
    where = path or "<root>"
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in b:
                (ok if _forgiven(p) else bad).append(f"{p}: missing now")
            elif k not in a:
                why = _forgiven(p)
                (ok if why else bad).append(f"{p}: added" + (f" ({why})" if why else ""))
            else:
                d, f = diff(a[k], b[k], p)
                bad += d
                ok += f
        return bad, ok
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d, f = diff(x, y, f"{path}[{i}]")
            bad += d
            ok += f
        return bad, ok
    if a != b:
        why = _forgiven(_starred(path))
        msg = f"{where}: {str(a)[:80]!r} -> {str(b)[:80]!r}"
        (ok if why else bad).append(msg + (f" ({why})" if why else ""))
    return bad, ok


def _starred(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def compare(names: list[str], current: Path) -> int:
    failures = 0
    forgiven: dict[str, int] = {}
    for name in names:
        gold = GOLDEN / f"{name}.json"
        if not gold.exists():
            print(f"{name}: no golden file (run with --update)")
            failures += 1
            continue
        a = _norm(json.loads(gold.read_text()))
        b = _norm(json.loads((current / f"{name}.json").read_text()))
        bad, ok = diff(a, b)
        for line in ok:
            key = line.split(":")[0]
            forgiven[_starred(key)] = forgiven.get(_starred(key), 0) + 1
        if bad:
            failures += 1
            print(f"{name}: {len(bad)} difference(s)")
            for line in bad[:20]:
                print(f"  {line}")
        else:
            print(f"{name}: equal")
    for key, n in sorted(forgiven.items()):
        print(f"forgiven: {key} ({n} case(s)): {_forgiven(key)}")
    print(f"{len(names) - failures} of {len(names)} golden reports equal")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--update", action="store_true", help="write the goldens")
    ap.add_argument("--quick", action="store_true", help="the 4-step subset only")
    args = ap.parse_args()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    if args.update:
        names = generate(GOLDEN, quick=args.quick)
        print(f"wrote {len(names)} golden reports to {GOLDEN.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        names = generate(Path(tmp), quick=args.quick)
        return compare(names, Path(tmp))


if __name__ == "__main__":
    raise SystemExit(main())
