"""The per-step gradient plot: |g| (L2 norm, log scale) against sampler step, per probe kind, one
panel per mode. Unreached probes are drawn as markers on the floor of the axis (not as zero), the
break as a red vertical line, sigma along the top axis.

:func:`plot_series` computes what is drawn (pure data, testable); :func:`grad_figure` only draws it.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from ..checks import PLAUSIBLE_SIGMAS, break_point, chi_band
from ..records import FlowReport, RunRecord
from ..text import BREAK_POINT_WORDS, steps_of

#: The kinds plotted, with their legend names and styles.
KINDS = {
    "state": ("state x_i", "o", "-", "#08519c"),
    "denoiser_in": ("denoiser input", "s", "--", "#6a51a3"),
    "denoiser_out": ("denoiser output", "^", "-.", "#238b45"),
    "step_noise": ("step noise", "D", ":", "#d94801"),
}


@dataclass
class ModeSeries:
    """What one panel shows."""

    mode: str
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> (x, |g|)
    unreached: list[tuple[float, str]] = field(default_factory=list)  # (x, probe name)
    zero: list[tuple[float, str]] = field(default_factory=list)
    nonfinite: list[tuple[float, str]] = field(default_factory=list)
    break_x: float | None = None
    break_label: str | None = None
    sigmas: dict[int, float] = field(default_factory=dict)
    # kind -> x of probes of that kind without a value: the kind's line is broken there, so a
    # step without gradient never looks as if it had one
    gaps: dict[str, list[float]] = field(default_factory=dict)
    z0: tuple[str, float | None] | None = None  # (status, |g|) of z0, drawn left of step 0


def _x(p) -> float:
    """Probe position on the step axis: mid-step evaluations (2mid) sit half a step later."""
    return p.step + (0.5 if p.name.endswith("@mid") else 0.0)


def plot_series(r: FlowReport) -> ModeSeries:
    s = ModeSeries(mode=r.mode)
    for p in (p for ps in steps_of(r).values() for p in ps):
        if p.sigma is not None and p.step not in s.sigmas:
            s.sigmas[p.step] = p.sigma
        kind = "state" if p.kind == "x_T" else p.kind
        if kind not in KINDS:
            continue
        st = p.status
        if st == "ok":
            s.lines.setdefault(kind, []).append((_x(p), p.norm))
            continue
        s.gaps.setdefault(kind, []).append(_x(p))
        if st == "zero":
            s.zero.append((_x(p), p.name))
        elif st == "nonfinite":
            s.nonfinite.append((_x(p), p.name))
        else:
            s.unreached.append((_x(p), p.name))
    for k in s.lines:
        s.lines[k].sort()
    z = next((p for p in r.probes if p.kind == "z0"), None)
    if z is not None:
        s.z0 = (z.status, z.norm if z.status == "ok" else None)
    bp = break_point(r)
    if bp is not None:
        a, b, kind = bp
        if a.step is not None and b.step is not None:
            s.break_x = (_x(a) + _x(b)) / 2 if a.step != b.step else _x(a) + 0.25
        elif a.step is not None or b.step is not None:
            s.break_x = _x(a if a.step is not None else b)
        s.break_label = f"break ({BREAK_POINT_WORDS[kind]}): {a.name} -> {b.name}"
    return s


def grad_figure(record: RunRecord):
    """The matplotlib Figure: one panel per mode, shared log y-axis."""
    series = [plot_series(r) for r in record.modes.values()]
    n = len(series)
    # one mode takes the page's width, several share it
    fig, axes = _subplots(1, n, figsize=(max(11.0, 6.2 * n), 4.4), sharey=True, squeeze=False)
    values = [y for s in series for pts in s.lines.values() for _, y in pts if y > 0] + \
        [s.z0[1] for s in series if s.z0 and s.z0[1]]
    lo = min(values) if values else 1e-6
    hi = max(values) if values else 1.0
    floor = 10 ** (math.floor(math.log10(lo)) - 1)
    for ax, s in zip(axes[0], series):
        for kind, pts in s.lines.items():
            name, marker, ls, color = KINDS[kind]
            xs = sorted([(x, y) for x, y in pts] + [(x, math.nan) for x in s.gaps.get(kind, [])])
            ax.plot([x for x, _ in xs], [y for _, y in xs], marker=marker, linestyle=ls,
                    color=color, markersize=4, linewidth=1.3, label=name)
        for pts, marker, color, what in ((s.unreached, "x", "#737373", "no gradient"),
                                         (s.zero, "v", "#d94801", "exactly zero"),
                                         (s.nonfinite, "*", "#cb181d", "non-finite")):
            if pts:
                ax.plot([x for x, _ in pts], [floor] * len(pts), linestyle="none", marker=marker,
                        color=color, markersize=7, label=what)
        if s.z0 is not None:  # the gradient's destination, left of the first step
            st, g = s.z0
            ax.plot([-1], [g if st == "ok" else floor], linestyle="none", marker="*",
                    markersize=13, color="#000000" if st == "ok" else "#737373",
                    label="z0" if st == "ok" else f"z0: {st.replace('_', ' ')}")
        if s.break_x is not None:
            ax.axvline(s.break_x, color="#cb181d", linestyle="--", linewidth=1.6,
                       label=s.break_label)
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, hi * 3)
        ax.set_xlabel("sampler step")
        ax.set_title(f"mode {s.mode}", fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
        if s.sigmas:
            steps = sorted(s.sigmas)
            every = max(1, math.ceil(len(steps) / 8))
            shown = steps[::every]
            top = ax.secondary_xaxis("top")
            top.set_xticks(shown)
            top.set_xticklabels([f"{s.sigmas[k]:.3g}" for k in shown], fontsize=8)
            top.set_xlabel("sigma", fontsize=9)
            ax.set_xticks(([-1] if s.z0 else []) + shown)
            ax.set_xticklabels((["z0"] if s.z0 else []) + [str(k) for k in shown])
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("|dL/dx| (L2 norm)")
    fig.tight_layout()
    return fig


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
              **kw) -> tuple[Figure, object]:
    """A Figure and its axes through matplotlib's object API: no pyplot, no global backend
    switch, no figure registry that keeps figures alive."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def samples_figure(record: RunRecord):
    """The sampler outputs of each mode as an image grid (rows: modes), or None if none are
    images."""
    rows = [(m, r) for m, r in record.modes.items() if r.samples]
    if not rows:
        return None
    import numpy as np

    cols = max(len(r.samples) for _, r in rows)
    strip = max((r.expect.get("frames") or 1) for _, r in rows)  # videos: wider panels
    fig, axes = _subplots(len(rows), cols, figsize=(1.3 * cols * min(strip, 4) ** 0.5 + 1.2,
                                                    1.4 * len(rows) + 0.3), squeeze=False)
    for i, (mode, r) in enumerate(rows):
        c, h, w = r.expect.get("sample_shape", [1, 8, 8])
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r.samples):
                ax.axis("off")
                continue
            img = np.asarray(r.samples[j], dtype=float).reshape(c, h, w)
            img = np.clip((img + 1) / 2, 0, 1)
            ax.imshow(img[0] if c == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            frames = r.expect.get("frames")
            if frames:  # a video: its frames side by side, separated
                for k in range(1, int(frames)):
                    ax.axvline(k * w / frames - 0.5, color="#d62728", linewidth=0.8)
            if j == 0:
                ax.set_ylabel(mode, fontsize=8)
    video = any(r.expect.get("frames") for _, r in rows)
    fig.suptitle("sampler outputs (clipped to [-1, 1])" + (
        "; video: frames left to right, first channel" if video else ""), fontsize=9)
    fig.tight_layout()
    return fig


def loss_curve_figure(data: dict):
    r = data["result"]
    fig, ax = _subplots(figsize=(6.4, 3.6))
    ax.plot(range(len(r["values"])), r["values"], color="#08519c", marker="o", markersize=2.5,
            label=r["objective"])
    ax.set_xlabel("iteration")
    ax.set_ylabel(quantity(r["objective"], r.get("extra") or {}))
    ax.set_title(f"objective {r['objective']}: "
                 f"{'maximise' if r['direction'] == 'up' else 'minimise'} it", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def quantity(objective: str, extra: dict) -> str:
    """What an objective's value is, for an axis label."""
    if objective == "diverge":
        return "MSE(output, baseline output)"
    if objective.startswith("class:"):
        return f"mean log p(digit {extra.get('class', objective.split(':', 1)[1])} | output)"
    if objective == "target":
        return "MSE(output, target image)"
    return f"objective {objective}"


def z_norm_figure(data: dict):
    r = data["result"]
    fig, ax = _subplots(figsize=(6.4, 3.2))
    ax.plot(range(len(r["z_norms"])), r["z_norms"], color="#238b45", label="mean ||z0||")
    d, batch = round(r["sqrt_d"] ** 2), r.get("batch") or 0
    judged = any(c.get("name") == "z0_plausible" for c in r.get("checks") or [])
    if batch and d and judged:  # the band the z0_plausible check holds the mean norm to
        mu, sd = chi_band(d, batch)
        ax.axhline(mu, color="#cb181d", linestyle="--", label=f"E||z|| = {mu:.3g} (chi, d={d})")
        ax.axhspan(mu - PLAUSIBLE_SIGMAS * sd, mu + PLAUSIBLE_SIGMAS * sd, color="#cb181d",
                   alpha=0.08, label=f"z0_plausible: +-{PLAUSIBLE_SIGMAS:g} sd of the mean norm "
                                     f"of {batch} Gaussian draws")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean per-sample ||z0||")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def before_after_figure(data: dict):
    import numpy as np

    before, after = data.get("samples_before"), data.get("samples_after")
    shape = data.get("sample_shape")
    if not before or not after or not shape or shape[0] not in (1, 3):
        return None
    c, h, w = shape
    cols = len(before)
    fig, axes = _subplots(2, cols, figsize=(1.3 * cols + 1.2, 3.2), squeeze=False)
    labels = data.get("labels_before"), data.get("labels_after")
    for i, (row, name) in enumerate(((before, "before"), (after, "after"))):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = np.clip((np.asarray(row[j], dtype=float).reshape(c, h, w) + 1) / 2, 0, 1)
            ax.imshow(img[0] if c == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            if labels[i]:
                k, p = labels[i][j]
                ax.set_title(f"{k} ({p:.2f})", fontsize=7)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig
