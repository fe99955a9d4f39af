"""Where every benchmark writes its raw results: ``benchmarks/results/<name>.json``, with the
commit, torch version, thread count and CPU model, so a quoted figure can be re-derived."""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, timeout=10).stdout.strip() or None
    except OSError:
        commit = None
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"commit": commit, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu, "python": platform.python_version(),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` (plain data) with the environment to ``results/<name>.json``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), "results": results}, indent=1,
                               sort_keys=True) + "\n")
    return path
