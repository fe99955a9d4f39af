"""The noise modes, in one registry: what each one promises about the step noise, which noise an
adapter hands a sampler that takes a ``noise_sampler`` in that mode, and how it reads in ``--help``.

The CLI (``choices``), the built-in sampler, the runner, the adapters and the checks all read this
table; adding a mode means adding a row here. No torch here (the checks read it).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Mode:
    """One noise mode.

    ``step_noise`` is what the checks expect of the step noise: ``none`` (nothing is injected),
    ``connected`` (derived from z0 differentiably), ``disconnected`` (fresh draws, by design),
    ``leaves`` (each step's noise its own learnable leaf) or ``unknown`` (a sampler of the user's
    own: scanned for fresh randomness). ``adapter_noise`` is the ``noise=`` an adapter passes to a
    sampler that takes a ``noise_sampler`` (``own``: the sampler's default). ``builtin`` modes are
    the ones the built-in sampler and ``gradcheck run --mode`` offer.
    """

    name: str
    step_noise: str
    adapter_noise: str
    help: str
    builtin: bool = True


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("default", "none", "own", "no per-step noise; the gradient reaches z0 through "
         "x_T = sigma_max * z0 only"),
    Mode("learnable_step_noise", "connected", "learnable", "step noise derived from z0 "
         "differentiably (a seeded orthogonal map per step), so it is optimised with z0"),
    Mode("fresh_noise", "disconnected", "fresh", "a seeded randn per step, as stock samplers "
         "draw it: not connected to z0"),
    Mode("independent_leaves", "leaves", "leaves", "each step noise its own learnable leaf "
         "(Direct Noise Optimization)"),
    Mode("custom", "unknown", "own", "a sampler of your own: its step noise is scanned for "
         "fresh randomness (reported as a warning)", builtin=False),
)}

#: The modes of the built-in sampler (``gradcheck run --mode``), in order.
BUILTIN_MODES: tuple[str, ...] = tuple(n for n, m in MODES.items() if m.builtin)
#: ``--mode both``: the originating note's two modes.
BOTH: tuple[str, ...] = ("default", "learnable_step_noise")
#: An adapter's ``noise=`` choice -> the mode the diagnosis runs in.
NOISE_TO_MODE: dict[str, str] = {"own": "custom", **{
    m.adapter_noise: n for n, m in MODES.items() if m.builtin and m.adapter_noise != "own"}}


def get(name: str, *, builtin: bool = False) -> Mode:
    """The mode called ``name``; ``builtin=True`` refuses ``custom`` (not a built-in sampler's)."""
    allowed = BUILTIN_MODES if builtin else tuple(MODES)
    if name not in allowed:
        raise ConfigError(f"unknown mode {name!r}; choose one of {', '.join(allowed)}")
    return MODES[name]


def parse(text: str) -> list[str]:
    """``--mode``: 'both' -> default + learnable_step_noise; 'all' -> every built-in mode; else
    a comma list of built-in modes."""
    if text == "both":
        return list(BOTH)
    if text == "all":
        return list(BUILTIN_MODES)
    names = [m.strip() for m in text.split(",") if m.strip()]
    for n in names:
        if n not in BUILTIN_MODES:
            raise ConfigError(f"unknown mode {n!r}; choose one of {', '.join(BUILTIN_MODES)}, "
                              f"both, all")
    if not names:
        raise ConfigError(f"no mode in --mode {text!r}")
    return names


def help_text() -> str:
    """The ``--mode`` help: every built-in mode with what it means."""
    return "; ".join(f"{n}: {MODES[n].help}" for n in BUILTIN_MODES) + \
        "; a comma list, 'both' (default + learnable_step_noise; the default) or 'all'"
