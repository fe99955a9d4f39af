"""What evidence a diagnosis buys, decided in one pure function: :func:`plan` takes the options
and the facts known after the recorded pass (the pass's cost, z0's dtype, the world size, what
the sampler offers) and says which further passes to make. The stages carry it out; nothing in
them decides again. No torch here: the plan is a table, and is tested as one
(``tests/test_plan.py``)."""
from __future__ import annotations

from dataclasses import dataclass

#: the default level's float64 shadow and its 7 working-precision directions are for samplers
#: whose recorded forward+backward takes at most this long; a slower one gets one direction,
#: its power stated, and checks="full" buys the rest
SHADOW_BUDGET_S = 2.0

#: what each ``checks`` level runs (see :func:`gradcheck.diagnose`)
LEVELS: dict[str, dict[str, object]] = {
    "quick": {"optim_steps": 0, "sweep": False, "one_sided": True},
    "default": {"optim_steps": 1, "sweep": False, "one_sided": "float64"},
    "full": {"optim_steps": 3, "sweep": True, "one_sided": False},
}


@dataclass(frozen=True)
class Facts:
    """What is known once the loss is built and the pass recorded."""

    level: str  # quick, default or full
    dtype: str  # z0's dtype, e.g. "float32"
    unit_s: float  # the recorded forward+backward, seconds
    world: int = 1  # processes
    numeric: bool = True  # the finite-difference check was asked for
    shadow: bool | None = None  # a float64 shadow asked for (True), refused (False), or default
    custom_loss: bool = False  # the user gave loss_fn (a shadow cannot reproduce it)
    castable: bool = False  # the sampler offers at_dtype (a float64 shadow of itself)
    optim_steps: int | None = None  # asked for explicitly, or None: the level's
    step_noise: str = "none"  # what the mode expects of the step noise ("unknown": custom)
    scan_randomness: bool | None = None  # asked for, or None: for a custom sampler
    # the built-in sampler runs code gradcheck does not know (the user's denoiser): scanned too
    foreign_denoiser: bool = False
    budget_s: float = SHADOW_BUDGET_S  # a pass above this is expensive at the default level


@dataclass(frozen=True)
class Plan:
    """The passes to make after the recorded one."""

    level: str  # quick, default or full
    expensive: bool  # the recorded pass costs more than the default level pays for twice
    shadow: bool  # a float64 shadow run
    numeric: bool  # the finite-difference check
    full_sweep: bool  # over every step size, not only the preferred one
    one_sided: bool | str  # one-sided differences (True; "float64": only there)
    optim_steps: int  # Adam steps
    optim_asked: bool  # their forward passes are paid even when the gradient was verified
    scan_randomness: bool  # the provenance pass looks for fresh draws, even when all passes
    scan_bias: bool  # ... and for values that leave autograd and come back

    def directions(self, shadow_judged: bool) -> int | None:
        """Random directions for the working-precision check: one where a float64 shadow
        carried the power (or at quick, or for an expensive pass); None: as many as the dtype's
        power needs."""
        return 1 if shadow_judged or self.level == "quick" or self.expensive else None


def random_target(level: str, world: int) -> bool:
    """The quick level skips the baseline draw: MSE to a seeded random target instead."""
    return level == "quick" and world == 1


def plan(f: Facts) -> Plan:
    """The passes to buy, from the facts (see :class:`Facts` and :class:`Plan`)."""
    level = LEVELS[f.level]
    expensive = f.unit_s > f.budget_s and f.level == "default" and f.shadow is None
    shadow = (f.numeric and not f.custom_loss and f.dtype != "float64" and f.world == 1
              and f.level != "quick" and not expensive
              and (f.shadow if f.shadow is not None else f.castable))
    scan = (f.step_noise == "unknown" or f.foreign_denoiser) if f.scan_randomness is None \
        else f.scan_randomness
    return Plan(
        level=f.level, expensive=expensive, shadow=bool(shadow), numeric=f.numeric,
        full_sweep=bool(level["sweep"]), one_sided=level["one_sided"],  # type: ignore[arg-type]
        optim_steps=f.optim_steps if f.optim_steps is not None else int(level["optim_steps"]),
        optim_asked=f.optim_steps is not None or f.level != "default",
        scan_randomness=scan,
        # below float64 (or without it) the numeric check cannot prove the gradient right: the
        # provenance pass looks for a proven bias; an expensive pass: checks="full" scans
        scan_bias=(not f.numeric or f.dtype != "float64") and f.level != "quick"
        and not expensive,
    )
