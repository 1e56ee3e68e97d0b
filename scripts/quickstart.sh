#!/usr/bin/env bash
# The main job on the embedded default: play the default environment with the scripted agent.
set -euo pipefail
. "$(dirname "$0")/_venv.sh" ""
exec python -m mtrl_envs.demo "$@"
