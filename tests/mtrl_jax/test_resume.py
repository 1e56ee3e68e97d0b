"""Resuming a run folder: which config differences block it, and what each mode does.

The plans here read checkpoints saved from a one-leaf state with a real config in their meta,
so no model or trainer is built (the CLI and trainer tests in ``test_trainer.py`` run one).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax.numpy as jnp
import pytest

from mtrl_jax.checkpoint import Checkpointer
from mtrl_jax.config import ConfigError, RunConfig, load_config, to_dict
from mtrl_jax.resume import (
    MISSING,
    ConfigChange,
    ConfigMismatchError,
    blocking_changes,
    describe_changes,
    diff_configs,
    is_safe_to_change,
    move_aside,
    plan_run,
)


def config(tmp_path: Path, *overrides: str) -> RunConfig:
    return load_config("quickstart", [f"out_dir={tmp_path}", "name=run", *overrides])


def save_checkpoint(cfg: RunConfig, step: int = 2) -> Path:
    """A committed checkpoint of ``cfg``'s run at ``step``, with its config in the meta."""
    state = {"w": jnp.zeros((2,), jnp.float32)}  # what the plan never reads
    meta = {"step": step, "config": to_dict(cfg)}
    return Checkpointer(cfg.checkpoint_dir).save(step, state, meta)


# --- comparing config dicts ---------------------------------------------------------------------


def test_diff_configs__reports_every_differing_leaf_with_its_dotted_key():
    old = {"seed": 0, "train": {"loss": {"kl_coef": 0.1}}, "env": {"kwargs": {"a": 1}}}
    new = {"seed": 1, "train": {"loss": {"kl_coef": 0.1}}, "env": {"kwargs": {"b": 2}}}
    changes = diff_configs(old, new)
    assert [(c.key, c.old, c.new) for c in changes] == [
        ("seed", 0, 1),
        ("env.kwargs.b", MISSING, 2),
        ("env.kwargs.a", 1, MISSING),
    ]
    assert str(changes[0]) == "seed 0 -> 1" and str(changes[2]) == "env.kwargs.a 1 -> <missing>"


def test_diff_configs__ints_equal_floats_but_bools_do_not_equal_ints():
    # A float field accepts `lr=1` from YAML; JSON keeps True and 1 apart, so must we.
    assert diff_configs({"lr": 1.0, "flag": True}, {"lr": 1, "flag": True}) == []
    assert [c.key for c in diff_configs({"flag": True}, {"flag": 1})] == ["flag"]


def test_blocking_changes__steps_eval_tracking_and_layout_never_block(tmp_path):
    old = config(tmp_path, "steps=2")
    new = config(
        tmp_path,
        "steps=40",
        "name=moved",
        "out_dir=elsewhere",
        "eval.every=5",
        "eval.samples_per_task=4",
        "eval.pass_k=[1, 4]",
        "tracking.enabled=false",
        "checkpoint.every=1",
        "checkpoint.keep=5",
        "mesh.train={data: 2}",
        "packing.rows_multiple=16",
        "train.num_micro_batches=8",
        "train.chunk_size=256",
        "engine.num_slots=32",
        "engine.decode_steps_per_call=4",
    )
    assert len(diff_configs(to_dict(old), to_dict(new))) == 15  # one per override
    assert blocking_changes(to_dict(old), to_dict(new)) == []


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "model.seed=1",
        "env.tasks_per_step=4",
        "sampler.temperature=0.7",
        "rollout.group_size=4",
        "train.loss.kl_coef=0.0",
        "train.optimizer.learning_rate=1e-4",
        "train.minibatches=2",
        "packing.seq_len=1024",
        "async.mode=async",
        "sft.steps=10",
    ],
)
def test_blocking_changes__what_is_trained_blocks(tmp_path, override):
    old, new = to_dict(config(tmp_path)), to_dict(config(tmp_path, override))
    (change,) = blocking_changes(old, new)
    assert change.key == override.split("=")[0]
    assert not is_safe_to_change(change.key)


def test_is_safe_to_change__prefixes_match_whole_sections_only():
    assert is_safe_to_change("eval.temperature") and is_safe_to_change("mesh.train.fsdp")
    assert not is_safe_to_change("evaluation") and not is_safe_to_change("stepsize")
    assert not is_safe_to_change("packing.seq_len")


def test_describe_changes__shows_three_then_counts_the_rest():
    changes = [ConfigChange((f"k{i}",), i, i + 1) for i in range(5)]
    assert describe_changes(changes) == "k0 0 -> 1, k1 1 -> 2, k2 2 -> 3 and 2 more"
    assert describe_changes(changes[:2]) == "k0 0 -> 1, k1 1 -> 2"


# --- plans ---------------------------------------------------------------------------------------


def test_plan_run__a_folder_without_a_checkpoint_starts_a_new_run(tmp_path):
    cfg = config(tmp_path)
    plan = plan_run(cfg)
    assert plan.cfg is cfg and not plan.resumes and plan.notice() is None
    assert not cfg.run_dir.exists()  # the plan creates nothing
    assert "nothing to resume" in plan_run(cfg, "stored").notice()


def test_plan_run__same_experiment_resumes_with_the_new_safe_keys(tmp_path):
    checkpoint = save_checkpoint(config(tmp_path, "steps=2"))
    cfg = config(tmp_path, "steps=4", "tracking.enabled=false")
    plan = plan_run(cfg)
    assert plan.cfg is cfg and plan.step == 2 and plan.checkpoint == checkpoint
    assert [c.key for c in plan.applied] == ["steps", "tracking.enabled"]
    assert plan.notice() == (
        f"resuming run {cfg.run_dir} from step 2 (checkpoint {checkpoint}); "
        "changed: steps 2 -> 4, tracking.enabled true -> false"
    )


def test_plan_run__another_experiment_is_refused_naming_keys_and_ways_out(tmp_path):
    save_checkpoint(config(tmp_path))
    cfg = config(tmp_path, "seed=1", "model.seed=1", "rollout.group_size=4", "sft.steps=1")
    with pytest.raises(ConfigMismatchError) as caught:
        plan_run(cfg)
    err = caught.value
    assert isinstance(err, ConfigError) and err.step == 2
    assert [c.key for c in err.changes] == ["seed", "model.seed", "rollout.group_size", "sft.steps"]
    message = str(err)
    assert "\n" not in message and message.startswith(f"{cfg.run_dir} already holds a run")
    assert "seed 0 -> 1, model.seed 0 -> 1, rollout.group_size 8 -> 4 and 1 more" in message
    assert "resume='stored'" in message and "resume='fresh'" in message
    assert f"(to {cfg.run_dir}.old-<timestamp>)" in message
    assert err.message("WAYS {run_dir}").endswith(f"; WAYS {cfg.run_dir}")


def test_plan_run__stored_mode_keeps_the_stored_config_but_takes_safe_keys(tmp_path):
    checkpoint = save_checkpoint(config(tmp_path, "steps=2"))
    plan = plan_run(config(tmp_path, "steps=4", "seed=1", "eval.every=1"), "stored")
    assert plan.step == 2 and plan.cfg.seed == 0  # the stored experiment
    assert plan.cfg.steps == 4 and plan.cfg.eval.every == 1  # the new safe keys
    assert plan.cfg == config(tmp_path, "steps=4", "eval.every=1")
    assert [str(c) for c in plan.ignored] == ["seed 0 -> 1"]
    assert plan.notice() == (
        f"resuming run {plan.cfg.run_dir} from step 2 (checkpoint {checkpoint}); changed: "
        "steps 2 -> 4, eval.every 0 -> 1; kept the stored config where this one differs in keys "
        "that need a new run: seed 0 -> 1"
    )


def test_plan_run__fresh_moves_the_old_folder_aside_and_deletes_nothing(tmp_path):
    old = config(tmp_path)
    save_checkpoint(old)
    (old.run_dir / "notes.txt").write_text("kept")
    plan = plan_run(config(tmp_path, "seed=1"), "fresh")
    ((source, target),) = plan.moved
    assert source == old.run_dir and not old.run_dir.exists() and not plan.resumes
    assert target.parent == tmp_path and target.name.startswith("run.old-")
    assert (target / "notes.txt").read_text() == "kept"
    assert Checkpointer(target / "checkpoints").steps() == [2]
    assert plan.notice() == (
        f"starting a new run in {old.run_dir}; moved the previous one aside: "
        f"{old.run_dir} -> {target}"
    )


def test_plan_run__fresh_also_moves_a_checkpoint_folder_outside_the_run(tmp_path):
    cfg = config(tmp_path, f"checkpoint.dir={tmp_path / 'ckpts'}")
    save_checkpoint(cfg)
    plan = plan_run(cfg, "fresh")
    assert [source for source, _ in plan.moved] == [cfg.checkpoint_dir]  # no run folder yet
    assert plan_run(cfg).notice() is None  # nothing left to resume


def test_move_aside__two_moves_in_one_second_get_distinct_names(tmp_path):
    now = time.mktime((2026, 12, 7, 9, 30, 0, 0, 0, -1))
    first, second = tmp_path / "a", tmp_path / "a"
    first.mkdir()
    moved = move_aside(first, now)
    second.mkdir()
    again = move_aside(second, now)
    assert moved.name == "a.old-20261207-093000" and again.name == "a.old-20261207-093000-1"
    assert move_aside(tmp_path / "missing") is None
    assert sorted(os.listdir(tmp_path)) == ["a.old-20261207-093000", "a.old-20261207-093000-1"]
