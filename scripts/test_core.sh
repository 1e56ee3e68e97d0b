#!/usr/bin/env bash
# The minimal-install job: mtrl_gym and the built-in environments with only their own
# dependencies (gymnasium, numpy, jsonschema) plus the test runner — no JAX, torch or mlflow.
# Proves the core never needs the learner stack. Uses its own venv (.venv-core).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MTRL_VENV="${MTRL_CORE_VENV:-$ROOT/.venv-core}" . "$ROOT/scripts/_venv.sh" ""
python -m pip install --quiet "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" >&2
exec python -m pytest tests/mtrl_gym tests/envs -m "not slow and not gpu" -p no:cacheprovider "$@"
