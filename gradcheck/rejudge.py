"""A record read from a file is judged again from the evidence it holds: the checks are pure
functions of the record (:mod:`gradcheck.checks`), so its stored ``passed`` fields need not be
trusted. Where the stored verdict disagrees with the fresh one (a hand-edited or hostile file, or
a record written by another version of the checks), the fresh one stands and a note says so."""
from __future__ import annotations

from .checks import optimize_checks, run_checks
from .codec import RecordError
from .records import Finding, FlowReport, OptimizeRecord, RunRecord

#: a report holds one part per mode; more than this is not a run gradcheck wrote
MAX_MODES = 64


def disagreements(stored: list[Finding], fresh: list[Finding]) -> list[str]:
    """What the stored checks said that the fresh ones do not: ``name: stored X, re-judged Y``."""
    old = {c.name: c.passed for c in stored}
    word = {True: "PASS", False: "FAIL"}
    out = []
    for c in fresh:
        if c.level != "error":
            continue
        if c.name not in old:
            out.append(f"{c.name}: not stored, re-judged {word[c.passed]}")
        elif old[c.name] is not c.passed:
            out.append(f"{c.name}: stored {word[old[c.name]]}, re-judged {word[c.passed]}")
    return out


def _note(diffs: list[str]) -> str:
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    return (f"the stored verdict disagrees with the evidence the file records ({shown}); "
            f"this page shows the verdict judged again from the evidence")


def rejudge_flow(r: FlowReport) -> list[str]:
    fresh = run_checks(r)
    diffs = disagreements(r.checks, fresh)
    r.checks = fresh
    if diffs:
        r.notes = [*r.notes, _note(diffs)]
    return diffs


def rejudge(rec: RunRecord | OptimizeRecord) -> RunRecord | OptimizeRecord:
    """``rec`` with every check judged again (in place; returned for chaining). The disagreements
    are in each part's notes and in ``rec.rejudged`` (mode -> the checks that differ)."""
    rejudged: dict[str, list[str]] = {}
    if isinstance(rec, RunRecord):
        if len(rec.modes) > MAX_MODES:
            raise RecordError(f"{len(rec.modes)} modes, more than the {MAX_MODES} a report "
                              f"may have")
        if not rec.modes:
            raise RecordError("no modes: the report holds no diagnosis")
        for name, r in rec.modes.items():
            diffs = rejudge_flow(r)
            if diffs:
                rejudged[name] = diffs
    else:
        res = rec.result
        if not res.values:
            raise RecordError("result.values is empty: the optimisation records no iteration")
        fresh = optimize_checks(res)
        diffs = disagreements(res.checks, fresh)
        res.checks = fresh
        if diffs:
            rejudged[res.mode] = diffs
    rec.rejudged = rejudged
    return rec
