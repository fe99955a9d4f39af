"""The plan of evidence is a pure function of the options and the recorded pass: a table of level x
dtype x cost x world (and what the sampler offers) says which passes a diagnosis buys."""
from __future__ import annotations

import pytest

from gradcheck.plan import Facts, plan, random_target

CHEAP, DEAR = 0.01, 10.0

# level, dtype, unit_s, world, castable -> shadow, expensive, directions (shadow judged / not),
# optim steps, scan_bias
TABLE = [
    ("quick", "float64", CHEAP, 1, True, False, False, (1, 1), 0, False),
    ("quick", "float32", CHEAP, 1, True, False, False, (1, 1), 0, False),
    ("default", "float64", CHEAP, 1, True, False, False, (1, None), 1, False),
    ("default", "float32", CHEAP, 1, True, True, False, (1, None), 1, True),
    ("default", "float32", CHEAP, 1, False, False, False, (1, None), 1, True),
    ("default", "float32", DEAR, 1, True, False, True, (1, 1), 1, False),
    ("default", "float64", DEAR, 1, True, False, True, (1, 1), 1, False),
    ("default", "float32", CHEAP, 4, True, False, False, (1, None), 1, True),
    ("default", "bfloat16", CHEAP, 1, True, True, False, (1, None), 1, True),
    ("full", "float32", DEAR, 1, True, True, False, (1, None), 3, True),
    ("full", "float64", DEAR, 1, True, False, False, (1, None), 3, False),
    ("full", "float32", CHEAP, 2, True, False, False, (1, None), 3, True),
]


@pytest.mark.parametrize("level,dtype,unit_s,world,castable,shadow,expensive,dirs,optim,bias",
                         TABLE)
def test_the_plan_is_a_table(level, dtype, unit_s, world, castable, shadow, expensive, dirs,
                             optim, bias):
    p = plan(Facts(level=level, dtype=dtype, unit_s=unit_s, world=world, castable=castable))
    assert (p.shadow, p.expensive, (p.directions(True), p.directions(False)), p.optim_steps,
            p.scan_bias) == (shadow, expensive, dirs, optim, bias)
    assert p.full_sweep == (level == "full")
    assert p.one_sided == {"quick": True, "default": "float64", "full": False}[level]
    assert p.optim_asked == (level != "default")


def test_what_the_user_asks_overrides_the_level():
    base = dict(level="default", dtype="float32", unit_s=DEAR, castable=True)
    assert not plan(Facts(**base)).shadow  # expensive: the default level skips it
    assert not plan(Facts(**base, shadow=True)).expensive  # asked: never "expensive"
    assert plan(Facts(**base, shadow=True)).shadow
    assert not plan(Facts(**{**base, "unit_s": CHEAP}, shadow=False)).shadow
    assert not plan(Facts(**{**base, "unit_s": CHEAP}, custom_loss=True)).shadow
    assert not plan(Facts(**{**base, "unit_s": CHEAP}, numeric=False)).shadow
    p = plan(Facts(**base, optim_steps=4))
    assert p.optim_steps == 4 and p.optim_asked
    assert plan(Facts(**base, step_noise="unknown")).scan_randomness
    assert not plan(Facts(**base, step_noise="unknown", scan_randomness=False)).scan_randomness
    assert plan(Facts(**base, scan_randomness=True)).scan_randomness
    assert plan(Facts(level="default", dtype="float64", unit_s=CHEAP, numeric=False)).scan_bias


def test_only_the_quick_level_of_one_process_skips_the_baseline_draw():
    assert random_target("quick", 1)
    assert not random_target("quick", 2) and not random_target("default", 1)
