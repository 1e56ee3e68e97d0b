import subprocess
import sys

import pytest

from mtrl_gym import registered_env_ids
from mtrl_jax import cli


def test_mtrl__envs_lists_every_id(capsys):
    cli.main(["envs"])
    listed = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert listed == registered_env_ids()


def test_mtrl__play_delegates(capsys):
    summary = cli.main(["play", "mtrl/SopQuickstart-v0", "--episodes", "3"])
    assert summary["success_rate"] == 1.0


def test_mtrl__unknown_command_and_help():
    with pytest.raises(SystemExit) as e:
        cli.main(["trian"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0


def test_mtrl__cli_does_not_import_jax_for_env_commands():
    code = "import sys; from mtrl_jax import cli; cli.main(['envs']); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_mtrl__help_lists_the_learner_jobs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]}
    assert {"train", "sft", "eval", "export"} <= listed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "no_such_config"], "no_such_config"),
        (["train", "quickstart", "steps=2", "stray"], "'stray'"),
        (["train", "quickstart", "async.mode=sometimes"], "async.mode"),
        (["sft", "quickstart", "sft.steps=0"], "sft.steps is 0"),
        (["eval", "--model", "/nonexistent", "--env", "mtrl/SopQuickstart-v0"], "neither"),
        (["eval", "--model", "m", "--env", "mtrl/NoSuchEnv-v0"], "NoSuchEnv"),
        (["eval", "--model", "m", "--env", "mtrl/SopQuickstart-v0", "--k", "2"], "--k"),
        (["eval", "--model", "m", "--env", "x", "--env-kwargs", "{bad"], "not JSON"),
        (["export", "/nonexistent", "/tmp/out"], "not a run folder"),
    ],
)
def test_mtrl__bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mtrl {argv[0]}: error: ") and message in err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["quickstart", "--no-progress", "steps=1"],
        ["--no-progress", "quickstart", "steps=1"],
        ["quickstart", "steps=1", "--no-progress"],
    ],
)
def test_mtrl__train_options_may_follow_the_config(argv):
    args = cli._parse_config_args("mtrl train", "test", argv)
    assert args.no_progress is True
    assert args.args == ["quickstart", "steps=1"]


@pytest.mark.parametrize("command", ["train", "sft"])
def test_mtrl__training_on_a_sop_bench_env_id_is_refused(command, tmp_path, capsys):
    # Refused from the id alone, before any environment or model is built: the folder may even
    # be missing.
    argv = [command, "quickstart", f"env.id=sop-bench:{tmp_path}", f"out_dir={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mtrl {command}: error: "), err
    assert "evaluation-only" in err[0] and "CC BY-NC 4.0" in err[0]
    assert not list(tmp_path.iterdir())  # no run folder was started


@pytest.mark.parametrize(
    ("requested", "samples", "ks", "run_temperature", "expected"),
    [
        (None, 1, (1,), 0.7, (0.0, "greedy: one sample per task")),
        (None, 8, (1, 8), 0.7, (0.7, "the run's sampler.temperature")),
        (None, 8, (1,), 0.7, (0.7, "the run's sampler.temperature")),  # n > 1 samples alone
        (None, 8, (1, 8), None, (1.0, "default for several samples per task")),
        (0.0, 8, (1, 8), 0.7, (0.0, "--temperature")),  # explicit: obeyed (and warned about)
        (0.3, 1, (1,), None, (0.3, "--temperature")),
    ],
)
def test_eval_temperature__several_samples_default_to_sampling(
    requested, samples, ks, run_temperature, expected
):
    assert cli.eval_temperature(requested, samples, ks, run_temperature) == expected


def test_identical_samples_warning__only_greedy_decoding_of_several_samples():
    warning = cli.identical_samples_warning(0.0, 8, (1, 8))
    assert warning.startswith("WARNING: ") and "\n" not in warning
    assert "8 samples of each task are identical" in warning and "pass@k (k=1,8)" in warning
    assert cli.identical_samples_warning(0.0, 1, (1,)) is None
    assert cli.identical_samples_warning(1.0, 8, (1, 8)) is None


@pytest.mark.parametrize("command", ["train", "sft"])
def test_mtrl__resume_and_fresh_are_exclusive(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli._parse_config_args(f"mtrl {command}", "test", ["quickstart", "--resume", "--fresh"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    args = cli._parse_config_args("mtrl train", "test", ["--fresh", "quickstart", "steps=1"])
    assert args.fresh and not args.resume and args.args == ["quickstart", "steps=1"]


def test_mtrl_eval__run_folder_temperature_is_its_sampler_temperature(tmp_path):
    import jax.numpy as jnp

    from mtrl_jax.checkpoint import Checkpointer
    from mtrl_jax.config import load_config, to_dict

    cfg = load_config("quickstart", [f"out_dir={tmp_path}", "sampler.temperature=0.7"])
    meta = {"step": 1, "config": to_dict(cfg)}  # what the trainer stores; no real state needed
    Checkpointer(cfg.checkpoint_dir).save(1, {"w": jnp.zeros((2,))}, meta)
    assert cli._run_temperature(cfg.run_dir) == 0.7
    assert cli._run_temperature(tmp_path / "no_such_folder") is None  # load_model refuses it
