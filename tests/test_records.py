"""report.json round trip, strict JSON, and re-judging a saved record without torch."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest

from gradcheck.checks import run_checks
from gradcheck.errors import GradcheckError
from gradcheck.records import BreakEvent, Finding, FlowReport, ProbeStats, RunRecord
from gradcheck.report import load_record, summary, write_json_atomic
from gradcheck.runner import RunConfig, run
from gradcheck.sampling import SamplerConfig


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return run(RunConfig(modes=["default", "learnable_step_noise", "fresh_noise"],
                         sampler=SamplerConfig(steps=3), denoiser="gaussian", dtype="float64"))


def test_round_trip_is_lossless(record, tmp_path):
    path = write_json_atomic(tmp_path / "report.json", record.to_dict())
    back = load_record(path)
    assert back.to_dict() == record.to_dict()
    for mode, rep in back.modes.items():
        assert [f.to_dict() for f in run_checks(rep)] == [f.to_dict() for f in rep.checks]


def test_json_is_strict_and_documents_its_schema(record, tmp_path):
    d = record.to_dict()
    assert d["schema_version"] == 2 and d["tool"] == "gradcheck" and d["passed"] is True
    text = json.dumps(d, allow_nan=False)  # raises on NaN/Infinity
    mode = d["modes"]["default"]
    assert {"checks", "probes", "timings", "numeric", "optim", "hygiene", "loss"} <= set(mode)
    assert [p["order"] for p in mode["probes"]] == sorted(p["order"] for p in mode["probes"])
    assert {"torch", "python", "gradcheck", "device", "dtype"} <= set(d["environment"])
    assert "handles" not in text


def test_non_finite_numbers_are_tagged_and_survive():
    p = ProbeStats(name="x", kind="state", order=0, reached=True, norm=math.nan,
                   max_abs=math.inf, nonfinite=3)
    d = p.to_dict()
    assert d["norm"] == {"$float": "NaN"} and d["max_abs"] == {"$float": "Infinity"}
    json.dumps(d, allow_nan=False)
    back = ProbeStats.from_dict(d)
    assert math.isnan(back.norm) and back.max_abs == math.inf and back.status == "nonfinite"


def test_a_string_that_reads_nan_stays_a_string():
    # schema 1 turned any string field equal to "NaN"/"Infinity" into a float
    f = Finding(name="NaN", passed=False, message="Infinity", value="-Infinity",
                threshold=-math.inf)
    back = Finding.from_dict(json.loads(json.dumps(f.to_dict(), allow_nan=False)))
    assert back.name == "NaN" and back.message == "Infinity" and back.value == "-Infinity"
    assert back.threshold == -math.inf
    ev = BreakEvent(kind="hard", cause="detach", op="NaN", detail="Infinity")
    assert BreakEvent.from_dict(ev.to_dict()) == ev


def test_schema_1_files_are_still_read():
    from pathlib import Path

    gold = Path(__file__).parent / "data" / "report_schema1.json"  # as schema 1 wrote it
    assert json.loads(gold.read_text())["schema_version"] == 1
    rec = load_record(gold)
    assert rec.config["sampler"]["s_max"] == math.inf and rec.schema_version == 2
    assert rec.to_dict()["config"]["sampler"]["s_max"] == {"$float": "Infinity"}


def test_a_record_that_lacks_a_field_is_named():
    with pytest.raises(GradcheckError, match="FlowReport lacks the field 'hygiene'"):
        RunRecord.from_dict({"schema_version": 2, "tool": "gradcheck", "config": {},
                             "environment": {}, "modes": {"default": {
                                 "mode": "default", "objective": "minimize",
                                 "loss_description": "", "loss": 1.0,
                                 "output_requires_grad": True, "loss_requires_grad": True,
                                 "output_grad_max_abs": 1.0, "probes": [], "numeric": None,
                                 "optim": None}}})


def test_schema_and_docs_are_generated_from_the_records():
    from gradcheck import schema

    assert schema.main(["--check"]) == 0, "run python -m gradcheck.schema --write"
    s = schema.schemas()["report.schema.json"]
    probe = s["$defs"]["ProbeStats"]
    assert probe["additionalProperties"] is False and "norm" in probe["properties"]
    assert set(s["required"]) >= {"config", "environment", "modes", "passed"}


def test_the_schema_rejects_what_the_records_would_not_write(record):
    import jsonschema

    from gradcheck import schema

    validator = jsonschema.Draft202012Validator(schema.schemas()["report.schema.json"])
    d = record.to_dict()
    assert not list(validator.iter_errors(d))
    d["modes"]["default"]["probes"][0]["norm"] = "NaN"  # schema 1's ambiguous encoding
    assert list(validator.iter_errors(d))
    d = record.to_dict()
    d["modes"]["default"]["surprise"] = 1
    assert list(validator.iter_errors(d))


def test_unknown_schema_version_is_refused(record):
    d = record.to_dict()
    d["schema_version"] = 99
    with pytest.raises(GradcheckError, match="schema_version 99"):
        RunRecord.from_dict(d)


def test_records_checks_and_summary_work_without_torch(record, tmp_path):
    path = write_json_atomic(tmp_path / "report.json", record.to_dict())
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import gradcheck
        from gradcheck.report import load_record, summary
        from gradcheck.checks import run_checks
        rec = load_record({str(path)!r})
        for rep in rec.modes.values():
            rep.checks = run_checks(rep)
        print(summary(rec))
        assert "torch" not in sys.modules
        print("NO-TORCH-OK", rec.passed)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "NO-TORCH-OK True" in res.stdout
    assert summary(record) in res.stdout


def test_summary_shows_every_check_and_a_step_table(record):
    text = summary(record)
    for mode in ("default", "learnable_step_noise", "fresh_noise"):
        assert f"mode {mode}: PASS" in text
    assert "|g| state" in text and "|g| eps" in text
    assert text.count("grad_reaches_z0") == 3
    assert text.rstrip().endswith("verdict: all checks pass")


def test_flow_report_helpers(record):
    rep: FlowReport = record.modes["learnable_step_noise"]
    assert rep.probe("z0").kind == "z0"
    with pytest.raises(KeyError, match="no probe named 'nope'"):
        rep.probe("nope")
    assert len(rep.of_kind("step_noise")) == 3


def test_a_report_prints_in_one_line_and_summarises_on_request():
    import torch

    import gradcheck
    from gradcheck.sampling import GaussianDenoiser, ResSampler, SamplerConfig

    rep = gradcheck.diagnose(ResSampler(GaussianDenoiser(), SamplerConfig(steps=2)),
                             torch.randn(2, 1, 8, 8, dtype=torch.float64), optim_steps=0)
    text = repr(rep)
    assert text.startswith("<FlowReport mode=default PASS (") and len(text) < 120, text
    assert "\n" not in text and str(rep) == text
    s = gradcheck.summary(rep)
    assert s.startswith("mode default: PASS") and "numeric_directional" in s and "step" in s
