#!/usr/bin/env bash
# The whole test suite: lint, format check, then pytest (not slow, not gpu) on 8 fake CPU devices.
set -euo pipefail
. "$(dirname "$0")/_venv.sh" test
ruff check .
ruff format --check .
exec python -m pytest -m "not slow and not gpu" "$@"
