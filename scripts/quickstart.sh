#!/usr/bin/env bash
# The main job on the embedded default: build the tiny tokenizer and model, warm-start it with SFT
# on oracle demonstrations of mtrl/SopQuickstart-v0, then RL (GRPO advantages, CISPO loss), with
# held-out success printed before and after. Arguments are config overrides (key=value), e.g.
#   bash scripts/quickstart.sh train.loss.policy_loss=ppo rollout.advantage.estimator=rloo
# `bash scripts/quickstart.sh --demo` plays the scripted oracle instead (core install, no JAX).
set -euo pipefail
if [ "${1:-}" = "--demo" ]; then
  shift
  . "$(dirname "$0")/_venv.sh" ""
  exec python -m mtrl_envs.demo "$@"
fi
. "$(dirname "$0")/_venv.sh" jax
exec python -m mtrl_jax.cli train quickstart "$@"
