"""Write a run's report files from its record alone: the per-step plot, the Graphviz step graphs,
the raw autograd graphs (small runs), and a self-contained ``index.html`` (CSS, the page's data and
its script inline, images as data URIs, no network; the views themselves are built in
:mod:`.views`). Every file is written atomically; ``index.html`` is written last, so a failure
part-way leaves no half-written page (and a previous one intact). ``render_diff`` writes the page
of ``gradcheck diff``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from ..checks import break_between, break_point
from ..errors import ConfigError
from ..sanitize import slugs
from ..records import FlowReport, OpGraph, OptimizeRecord, RunRecord
from ..text import CAUSES, fmt, locator_failures, located, value
from . import dot, opviews, plots, views
from .files import write_bytes_atomic, write_json_atomic, write_text_atomic
from .shapes import markup
from .staging import Stage, staged
from ..text import step_rows

GRAPH_POLICIES = ("auto", "always", "never")


@dataclass
class Rendered:
    """What :func:`render` wrote, and what it could not draw (and why)."""

    out_dir: Path
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out_dir / "index.html"


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("gradcheck.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def _csp(script: str | None) -> str:
    """The page's Content-Security-Policy: nothing loads from anywhere, images are data URIs,
    and the one script that runs is the page's own (by its hash; no inline event handler, no
    other script, even if markup got into the page)."""
    src = f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" \
        if script else "'none'"
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {src}; "
            f"base-uri 'none'; form-action 'none'")


def _script() -> str:
    """The page's script (its text, hashed into the CSP)."""
    return _env().get_template("_report.js").render()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _cell_class(v: str) -> str:
    return {"none": "none", "no-graph": "nograph", "0": "zero"}.get(v, "")


def _show(v: Any) -> str:
    """A configuration value as text: non-finite floats one way wherever they come from
    (``inf``, also when read back from JSON), lists shortened."""
    if isinstance(v, dict) and set(v) == {"$float"}:
        v = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v["$float"], v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf
                                            else f"{v:g}")
    if isinstance(v, list) and len(v) > 12:
        return f"[{', '.join(_show(x) for x in v[:6])}, ... ({len(v)} values)]"
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and set(v) != {"$float"}:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, _show(v)))
    return out


#: timings in the order the stages run (anything else after them, as recorded)
TIMING_ORDER = ("setup_s", "baseline_s", "forward_s", "backward_s", "shadow_s", "numeric_s", "optim_s",
                "path_probe_s", "locate_s", "total_s")


def timing_keys(timings: list[dict[str, float]]) -> list[str]:
    seen = []
    for t in timings:
        seen += [k for k in t if k not in seen]
    rank = {k: i for i, k in enumerate(TIMING_ORDER)}
    return sorted(seen, key=lambda k: (k == "total_s", rank.get(k, len(TIMING_ORDER) - 1),
                                       seen.index(k)))


def config_rows(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The configuration as the report lists it: what was set, once. Unset options (None) are
    left out; the churn of each mode replaces the unset global one; the distributed options
    appear only for a run of several processes; the sigmas in full."""
    cfg = dict(cfg)
    sampler = dict(cfg.get("sampler") or {})
    by_mode = cfg.pop("s_churn_by_mode", None)
    if by_mode:
        if sampler.get("s_churn") is None:
            sampler.pop("s_churn", None)
        for m, v in by_mode.items():
            sampler[f"s_churn ({m})"] = v
    if sampler.get("solver") == "2mid" and sampler.get("steps"):
        # steps counts denoiser calls; 2mid makes two a solver step
        sampler["steps"] = f"{sampler['steps']} denoiser calls = {max(1, sampler['steps'] // 2)} " \
            f"solver steps (2mid: two calls a step, the second '@mid')"
    if sampler:
        cfg["sampler"] = sampler
    if (cfg.get("nproc") or 1) <= 1:
        for k in ("nproc", "parallel", "dist_timeout"):
            cfg.pop(k, None)
    sigmas = cfg.pop("sigmas", None)
    rows = [(k, v) for k, v in _flatten(cfg) if v != "None"]
    if sigmas:
        rows.append(("sigmas", ", ".join(f"{x:.4g}" for x in sigmas)))
    return rows


def _headline(r: FlowReport) -> str:
    """The z0 verdict; in a distributed run whose ranks do not all get gradient, that one."""
    for name in ("grad_reaches_every_rank", "every_rank_passes", "grad_reaches_z0"):
        f = next((c for c in r.checks if c.name == name), None)
        if f is not None and (not f.passed or name == "grad_reaches_z0"):
            return f.message.split(";")[0].split(" (located")[0]
    return ""


def _draw(src: str, stem: str, out: Path, policy: str, res: Rendered,
          formats: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Lay out DOT source into ``out/stem.<fmt>``; return (svg data URI, note)."""
    if policy == "never":
        return None, "graph drawing is off (--graph never)"
    try:
        images = dot.layout(src, formats)
    except dot.GraphvizMissing:
        if policy == "always":
            raise
        return None, dot.INSTALL_HINT
    except dot.LayoutFailed as exc:
        return None, f"not drawn: {exc}"
    for f, data in images.items():
        write_bytes_atomic(out / f"{stem}.{f}", data)
        res.files.append(f"{stem}.{f}")
    return _uri("image/svg+xml", images["svg"]), None


def run_title(cfg: dict[str, Any]) -> str:
    """One line saying what was diagnosed: the built-in RES sampler's settings, or a user
    sampler's description (an adapter's, or the test that made the diagnosis)."""
    z = f"z0 {cfg.get('z0_shape')} {cfg.get('dtype')}"
    if "sampler_description" in cfg:
        head = cfg["sampler_description"]
        if cfg.get("test"):
            head = f"{cfg['test']}: {head}"
        return f"{head}, {z}" + (f", seed {cfg['seed']}" if "seed" in cfg else "")
    s = cfg.get("sampler", {})
    procs = f", {cfg['nproc']} processes ({cfg.get('parallel')})" \
        if (cfg.get("nproc") or 1) > 1 else ""
    return (f"RES {s.get('solver')}, {s.get('steps')} steps, denoiser {cfg.get('denoiser')}, "
            f"{z}, seed {cfg.get('seed')}{procs}")


def _open_at(r: FlowReport) -> str | None:
    """The step a failing run's page opens on: the located break's, else the break point's."""
    if r.passed:
        return None
    ev = r.locator.primary if r.locator and r.locator.ran and r.locator.primary else None
    if ev is not None and ev.step is not None:
        return str(ev.step)
    bp = break_point(r)
    if bp is None:
        return None
    a, b, _ = bp
    for p in (b, a):
        if p.step is not None:
            return str(p.step)
    return "end" if b.kind not in ("z0", "x_T") else "start"


def _mode_view(name: str, stem: str, r: FlowReport, out: Path, graphs: str, res: Rendered,
               big_raw: OpGraph | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One mode's part of the page (its texts, tables and views; its static graphs drawn into
    ``out``; their file names from ``stem``, a slug of the mode's name), and its data for the
    page's script."""
    errors = [f for f in r.checks if f.level == "error"]
    src = dot.step_graph_dot(r)
    write_text_atomic(out / f"graph_{stem}.dot", src)
    res.files.append(f"graph_{stem}.dot")
    _, note = _draw(src, f"graph_{stem}", out, graphs, res, ("svg", "png"))
    if note:
        res.notes.append(f"{name} step graph: {note}")
    static = {"svg": None if note else f"graph_{stem}.svg",
              "png": None if note else f"graph_{stem}.png", "dot": f"graph_{stem}.dot",
              "note": note}

    g = r.graph
    raw = {"file": None, "dot_file": None, "note": None}
    if g is not None and g.raw is not None:
        raw_src = dot.op_graph_dot(g.raw, f"autograd_{stem}")
        write_text_atomic(out / f"autograd_{stem}.dot", raw_src)
        res.files.append(f"autograd_{stem}.dot")
        raw["dot_file"] = f"autograd_{stem}.dot"
        uri, raw["note"] = _draw(raw_src, f"autograd_{stem}", out, graphs, res, ("svg",))
        if uri:
            raw["file"] = f"autograd_{stem}.svg"
    else:
        why = g.raw_skipped if g is not None else "no autograd graph was recorded"
        raw["note"] = f"whole op-level graph not kept: {why}" if why else None
        if big_raw is not None:
            write_text_atomic(out / f"autograd_{stem}.dot",
                              dot.op_graph_dot(big_raw, f"autograd_{stem}"))
            res.files.append(f"autograd_{stem}.dot")
            raw["dot_file"] = f"autograd_{stem}.dot"
    interned: dict[str, int] = {}
    opv = opviews.op_views(r, interned)
    table, by_order = list(interned), {p.order: p for p in r.probes}
    detail = bool(g.detail) if g else False
    op_templates = [markup(opviews.op_view(key, v, table, by_order, detail,
                                           g.detail_skipped if g else None))
                    for key, v in opv.items()]
    data = {"name": name, "open": _open_at(r)}
    view = {
        "name": name, "passed": r.passed, "locator": r.locator, "truncation": r.truncation,
        "notes": r.notes, "sampler": r.sampler, "ranks": r.ranks,
        "ranks_differ": bool(r.ranks) and len({(x["passed"], x["z0_status"],
                                                tuple(x["failed"])) for x in r.ranks}) > 1,
        "located": located(r) if r.locator and r.locator.primary else None,
        "locator_failures": locator_failures(r), "n_ok": sum(f.passed for f in errors),
        "n_checks": len(errors), "headline": _headline(r), "break_text": break_between(r),
        "break_view": views.break_view(r),
        "step_rows": step_rows(r), "static": static, "raw_graph": raw,
        "heatmap": markup(views.heatmap(r)), "chain": markup(views.chain_view(r)),
        "op_templates": op_templates,
        "n_views": len(opv), "open": data["open"],
        "detail": bool(g.detail) if g else False,
        "detail_skipped": g.detail_skipped if g else None,
        "graph_stats": (f"{len(g.nodes)} probes, {len(g.edges)} edges collapsed from "
                        f"{g.total_nodes} autograd nodes") if g else "",
        "timings": r.timings, "probes": r.probes, "cost": r.cost,
        "raised": _raised_view(r),
    }
    return view, data


def _raised_view(r: FlowReport) -> dict[str, Any] | None:
    """What raised, where and what usually causes it (None: the sampler ran). The page shows
    it in the banner instead of panels that a run which never finished cannot fill."""
    x = r.raised
    if x is None:
        return None
    where = x.location or "?"
    if x.function:
        where += f" (in {x.function})"
    if x.step is not None:
        where += f", step {x.step}"
    return {"what": f"{x.type} in the {x.phase} pass", "where": where, "message": x.message,
            "hint": x.hint}


def _ratio_markup(md: Any) -> str:
    drawing = views.ratio(md)
    return markup(drawing) if drawing is not None else ""


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</script>', no HTML-significant characters)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(record: RunRecord, out_dir: str | os.PathLike[str], *, graphs: str = "auto",
           raw_graphs: dict[str, OpGraph | None] | None = None,
           generated: str | None = None, record_file: str | None = None) -> Rendered:
    """Write every report file for ``record`` into ``out_dir``, replacing the report there whole
    (:mod:`.staging`: a failure or a kill part-way leaves the previous one as it was).

    Args:
        record: the run (from :func:`gradcheck.runner.run` or ``load_record``).
        out_dir: the directory (created if needed). Files there that gradcheck did not write
            stay; gradcheck's own files of an earlier report go.
        graphs: ``auto`` draws graphs when Graphviz is installed and explains otherwise;
            ``always`` makes a missing ``dot`` an error; ``never`` skips layout.
        raw_graphs: per mode, the op-level graph of runs above the record's node cap, written
            as ``autograd_<mode>.dot`` for reference (the run has them; a re-render does not).
        generated: the timestamp shown in the footer (default: now, UTC).
        record_file: also write the record itself there under this name (``report.json``).
    """
    if graphs not in GRAPH_POLICIES:
        raise ConfigError(f"unknown graph policy {graphs!r}; choose one of {', '.join(GRAPH_POLICIES)}")
    if graphs == "always" and dot.find_dot() is None:
        raise dot.GraphvizMissing(f"--graph always, but the Graphviz 'dot' binary is not on PATH: "
                                  f"{dot.INSTALL_HINT}")
    with staged(out_dir) as stage:
        res = write_run_files(record, stage.path, graphs, raw_graphs, generated)
        if record_file:
            write_json_atomic(stage.path / record_file, record.to_dict())
            res.files.append(record_file)
    return landed(res, stage)


def landed(res: Rendered, stage: Stage) -> Rendered:
    """``res``, written into ``stage.path``, as it landed: in ``stage.out``, with its notes."""
    res.out_dir = stage.out
    res.notes += stage.notes
    return res


def write_run_files(record: RunRecord, out: Path, graphs: str = "auto",
                    raw_graphs: dict[str, OpGraph | None] | None = None,
                    generated: str | None = None) -> Rendered:
    """The report's files written into ``out`` as it is (a staging directory: see :func:`render`)."""
    res = Rendered(out_dir=out)
    png = plots.figure_png(plots.grad_figure(record))
    write_bytes_atomic(out / "grad_per_step.png", png)
    res.files.append("grad_per_step.png")

    samples_uri = None
    sfig = plots.samples_figure(record)
    if sfig is not None:
        spng = plots.figure_png(sfig)
        write_bytes_atomic(out / "samples.png", spng)
        res.files.append("samples.png")
        samples_uri = _uri("image/png", spng)

    modes, data = [], []
    stems = slugs(list(record.modes))
    for name, r in record.modes.items():
        view, d = _mode_view(name, stems[name], r, out, graphs, res,
                             (raw_graphs or {}).get(name))
        modes.append(view)
        data.append(d)
    page_data = _script_json({"modes": data})

    names = []
    for r in record.modes.values():
        names += [f.name for f in r.checks if f.name not in names]
    check_rows = []
    for n in names:
        cells = []
        for r in record.modes.values():
            f = next((c for c in r.checks if c.name == n), None)
            cells.append(None if f is None else {
                "tag": {"info": "info", "warning": "warn"}.get(f.level)
                or ("pass" if f.passed else "fail"),
                "message": f.message, "value": value(f.value), "threshold": value(f.threshold)})
        check_rows.append({"name": n, "cells": cells})

    cfg = record.config
    title = run_title(cfg)
    config = config_rows(cfg)
    tkeys = timing_keys([m["timings"] for m in modes])
    script = _script()
    html = _env().get_template("index.html.j2").render(
        script=script, csp=_csp(script), title=title, modes=modes, check_rows=check_rows,
        plot_uri=_uri("image/png", png),
        samples_uri=samples_uri, grid_cols=max(1, len(modes)),
        config=config, environment=_flatten(record.environment), timing_keys=tkeys,
        page_data=page_data, cell_class=_cell_class, fmt=fmt, causes=CAUSES,
        fmtg=lambda x: f"{x:.4g}", secs=lambda x: f"{x:.3f}" if x is not None else "-",
        version=record.environment.get("gradcheck", ""),
        schema_version=record.schema_version,
        generated=generated or _now(),
    )
    write_text_atomic(out / "index.html", html)
    res.files.append("index.html")
    return res


def render_optimize(rec: OptimizeRecord, out_dir: str | os.PathLike[str], *,
                    generated: str | None = None, record_file: str | None = None) -> Rendered:
    """Write the optimisation report from its record alone (``optimize.json``):
    ``loss_curve.png``, ``z0_norm.png``, ``samples_before_after.png`` and ``index.html``."""
    with staged(out_dir) as stage:
        res = write_optimize_files(rec, stage.path, generated)
        if record_file:
            write_json_atomic(stage.path / record_file, rec.to_dict())
            res.files.append(record_file)
    return landed(res, stage)


def write_optimize_files(rec: OptimizeRecord, out: Path, generated: str | None = None) -> Rendered:
    """The optimisation report's files written into ``out`` as it is."""
    data = asdict(rec)
    res = Rendered(out_dir=out)
    images = {}
    for name, fig in (("loss_curve", plots.loss_curve_figure(data)),
                      ("z0_norm", plots.z_norm_figure(data)),
                      ("samples_before_after", plots.before_after_figure(data))):
        if fig is None:
            continue
        png = plots.figure_png(fig)
        write_bytes_atomic(out / f"{name}.png", png)
        res.files.append(f"{name}.png")
        images[name] = _uri("image/png", png)
    r = data["result"]
    html = _env().get_template("optimize.html.j2").render(
        csp=_csp(None), d=data, r=r, images=images, passed=rec.passed,
        config=_flatten(data["config"]),
        environment=_flatten(data.get("environment", {})), grid_cols=2,
        version=data.get("environment", {}).get("gradcheck", ""), generated=generated or _now(),
    )
    write_text_atomic(out / "index.html", html)
    res.files.append("index.html")
    return res


def render_diff(d: Any, out_dir: str | os.PathLike[str], *, generated: str | None = None) -> Rendered:
    """Write ``index.html`` of a :class:`gradcheck.diff.RunDiff` into ``out_dir``."""
    from .. import __version__
    from ..diff import RATIO_NOTE

    with staged(out_dir) as stage:
        res = Rendered(out_dir=stage.path)
        _write_diff(d, stage.path, generated, __version__, RATIO_NOTE)
        res.files.append("index.html")
    return landed(res, stage)


def _write_diff(d: Any, out: Path, generated: str | None, version: str, ratio: float) -> None:
    html = _env().get_template("diff.html.j2").render(
        csp=_csp(None), d=d, ratio_svg=_ratio_markup, fmt=fmt, factor=f"{ratio:g}",
        grid_cols=1, version=version, generated=generated or _now())
    write_text_atomic(out / "index.html", html)
