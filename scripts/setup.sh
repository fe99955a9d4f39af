#!/usr/bin/env bash
# Set up gradcheck in ./.venv: the CPU build of PyTorch, then the package with its test extras.
# GPU users: GRADCHECK_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
# (or any CUDA build of torch >= 2.2) before running this, or `pip install torch` yourself first.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "gradcheck setup: $*" >&2; }
start=$SECONDS
say "about 2-3 minutes on a fresh machine (most of it PyTorch's CPU wheel); seconds when set up"
say "[1/4] system packages (graphviz for 'dot'; chromium with --browser), if missing"
bash scripts/system-deps.sh "$@"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "[2/4] a virtual environment in ./.venv"
  "$PY" -m venv .venv
else
  say "[2/4] ./.venv exists: reused"
fi
say "[3/4] PyTorch (${GRADCHECK_TORCH:-torch==2.13.0}, the CPU build: ~200 MB) and gradcheck with its test extras"
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${GRADCHECK_TORCH:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[test]"
say "[4/4] k-diffusion's samplers for their tests"
# the real k-diffusion for its tests: its samplers need torchdiffeq, torchsde and scipy; its package
# __init__ imports training code needing torchvision, whose registry wheels are CUDA builds that
# cannot load against the CPU torch, so it comes without dependencies and the tests load its
# sampling.py alone (tests/test_kdiffusion_real.py)
.venv/bin/python -m pip install -q "torchdiffeq==0.2.5" "torchsde==0.2.6" "trampoline==0.1.2"
.venv/bin/python -m pip install -q --no-deps "k-diffusion==0.1.1.post1"
say "done in $((SECONDS - start)) s"
