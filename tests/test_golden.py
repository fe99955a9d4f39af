"""Golden reports: the 4-step subset of scripts/golden.py (every solver, --mode all, an adapter run,
one fault per kind) regenerated and compared with tests/golden/ (timings and environment ignored;
the differences it forgives are listed, with their reason, in the script). A change that means to
alter a report updates the goldens with ``scripts/golden.py --update`` and says why."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_golden_reports_are_unchanged():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "golden.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    import re

    m = re.search(r"(\d+) of (\d+) golden reports equal", res.stdout)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 25, res.stdout[-2000:]


def test_the_comparison_ignores_where_code_sits_and_nothing_else():
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_script", ROOT / "scripts" / "golden.py")
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    a = {"detail": "cut at gradcheck/sampling/denoisers.py:66 (forward)", "source_line": 66,
         "location": "/usr/lib/python3/site-packages/diffusers/x.py:12", "step": 3}
    moved = {"detail": "cut at gradcheck/sampling/denoisers.py:70 (forward)", "source_line": 70,
             "location": "/opt/venv/lib/python3.11/site-packages/diffusers/x.py:19", "step": 3}
    assert golden.diff(golden._norm(a), golden._norm(moved)) == ([], [])
    for key, other in (("detail", "cut at gradcheck/sampling/solvers.py:66 (forward)"),
                       ("step", 4), ("location", "/opt/venv/site-packages/torch/x.py:12")):
        bad, _ = golden.diff(golden._norm(a), golden._norm({**a, key: other}))
        assert bad, key
