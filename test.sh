#!/usr/bin/env bash
# Lint, types, doctests and the CPU test suite: exactly what CI runs. Usage: ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

# Bring your own torch; on a machine without one, the version CI uses (CPU wheel where available).
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"

ruff check fastforward tests benchmarks docs
ruff format --check fastforward tests benchmarks docs
mypy
python -m pytest -m "not gpu" --doctest-modules fastforward tests "$@"
