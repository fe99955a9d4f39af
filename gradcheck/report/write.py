"""``gradcheck.write_report``: the HTML report (and report.json) of your own diagnoses, in one call."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records import FlowReport, RunRecord


def as_record(reports: FlowReport | Sequence[FlowReport] | Mapping[str, FlowReport], *,
              label: str | None = None, config: dict[str, Any] | None = None) -> RunRecord:
    """A :class:`RunRecord` holding ``reports``: one report, a list (keyed by their modes; a
    repeated mode gets ``-2``, ``-3``, ...) or a mapping name -> report."""
    from .. import __version__

    if isinstance(reports, FlowReport):
        reports = [reports]
    if isinstance(reports, Mapping):
        modes = dict(reports)
    else:
        modes = {}
        for r in reports:
            key, k = r.mode, 2
            while key in modes:
                key, k = f"{r.mode}-{k}", k + 1
            modes[key] = r
    if not modes or not all(isinstance(r, FlowReport) for r in modes.values()):
        raise TypeError("write_report takes a FlowReport, a list of them or a mapping of them")
    first = next(iter(modes.values()))
    z = next((p for p in first.probes if p.kind == "z0"), None)
    cfg = {"sampler_description": label or first.sampler or "a sampler function",
           "z0_shape": z.shape if z else None, "dtype": z.dtype if z else None,
           **(config or {})}
    return RunRecord(config=cfg, environment={"gradcheck": __version__}, modes=modes)


def write_report(reports: FlowReport | Sequence[FlowReport] | Mapping[str, FlowReport],
                 out_dir: str | os.PathLike[str], *, label: str | None = None,
                 graphs: str = "auto", config: dict[str, Any] | None = None) -> Path:
    """Write ``index.html``, its pictures and ``report.json`` for your own diagnoses into
    ``out_dir`` (the same report ``gradcheck run`` writes); returns the index.html path.
    ``label`` names the sampler in the page; ``graphs`` as ``gradcheck run --graph``. A directory
    that cannot be written raises :class:`gradcheck.OutputError` before anything is written; the
    report there is replaced whole (files gradcheck did not write stay)."""
    from .render import render

    record = as_record(reports, label=label, config=config)
    raw = {m: r.handles.get("raw_graph") for m, r in record.modes.items()}
    rendered = render(record, out_dir, graphs=graphs, raw_graphs=raw, record_file="report.json")
    return rendered.index
