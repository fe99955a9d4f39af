#!/usr/bin/env bash
# The field, not the lab: what a user gets from `pip install` today. Builds the wheel, installs it
# (not editable) into a clean venv beside the NEWEST torch the registry offers, runs
# `gradcheck run --steps 2` and `gradcheck report` from another directory, opens the page in
# headless Chromium, and runs the suite's torch_internals tests on that torch.
# Needs .venv (scripts/setup.sh) for building the wheel. About 2 minutes to install (the newest
# torch on PyPI is a CUDA build, ~5 GB; it runs on the CPU), 4 to test.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
V=.venv-newest
echo "newest torch: setting up $V (the newest torch the registry offers; ~2 minutes)" >&2
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
$V/bin/python -m pip install -q --upgrade "torch>=2.2"
rm -rf dist
.venv/bin/python -m pip wheel . --no-deps --no-build-isolation -q -w dist
WHEEL=$(ls dist/gradcheck-*.whl)
$V/bin/python -m pip install -q --force-reinstall --no-deps "$WHEEL"
$V/bin/python -m pip install -q "$WHEEL[test]"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$ROOT/$V/bin/python" -c "import torch, gradcheck; print(f'newest torch: torch {torch.__version__}, gradcheck from {gradcheck.__file__}')"
"$ROOT/$V/bin/gradcheck" run --steps 2 --out r >/dev/null
"$ROOT/$V/bin/gradcheck" report r/report.json --out r2 >/dev/null
for page in r/index.html r2/index.html; do
  dom=$(timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$work/chrome" --dump-dom "file://$work/$page" 2>/dev/null)
  grep -q 'data-ready="1"' <<<"$dom" || { echo "newest torch: $page: the page's script did not run" >&2; exit 1; }
done
echo "newest torch: the installed wheel ran, rendered and re-rendered its page (Chromium ran its script)" >&2
cd "$ROOT"
"$V/bin/python" -m pytest -q -p no:cacheprovider -m torch_internals
