import json
import subprocess
import sys

import pytest

from mtrl_gym import cli, registered_env_ids


def test_cli__list_shows_every_env_with_a_description():
    out = subprocess.run(
        [sys.executable, "-m", "mtrl_gym", "list"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == registered_env_ids()
    assert all(len(line.split()) > 1 for line in lines)


@pytest.mark.parametrize("env_id", registered_env_ids())
def test_cli__random_agent_scores_about_zero_without_raising(env_id, capsys):
    summary = cli.main(["play", env_id, "--agent", "random", "--episodes", "6"])
    assert summary["success_rate"] == 0.0 and summary["episodes"] == 6
    assert set(summary["statuses"]) <= {"truncated", "format_error", "ok"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


def test_cli__oracle_summary_and_transcript(capsys):
    summary = cli.main(["play", "mtrl/Inventory-v0", "--episodes", "5", "--show", "1"])
    out = capsys.readouterr().out
    assert summary["success_rate"] == 1.0 and summary["success_rate_completed"] == 1.0
    assert summary["invalid_tool_call_rate"] == 0.0 and summary["mean_tool_calls"] >= 2
    assert "=== task inventory-" in out and "reward=1.0 status=ok" in out


def test_cli__bad_arguments_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["play", "mtrl/Nope-v0"])
    with pytest.raises(SystemExit):
        cli.main(["play", "mtrl/Inventory-v0", "--env-arg", "novalue"])
    with pytest.raises(ValueError, match="unknown agent"):
        cli.play("mtrl/Inventory-v0", agent="smart")
    with pytest.raises(ValueError, match="no episodes"):
        cli.summarize([])


def test_cli__env_args_are_passed_through():
    summary = cli.main(["play", "mtrl/Inventory-v0", "--episodes", "2", "--env-arg", "max_turns=1"])
    assert summary["statuses"] == {"truncated": 2}


def test_cli__play_takes_any_gymnasium_id_with_a_module_prefix():
    code = (
        "from mtrl_gym import cli\n"
        "s = cli.main(['play', 'tests.mtrl_gym.acme_envs:acme/Toy-v0', '--agent', 'random',"
        " '--episodes', '2'])\n"
        "assert s['episodes'] == 2 and s['env'] == 'tests.mtrl_gym.acme_envs:acme/Toy-v0'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    import tests.mtrl_gym.acme_envs  # noqa: F401 - registers acme/Toy-v0 in this process

    summary = cli.main(["play", "acme/Toy-v0", "--agent", "random", "--episodes", "2"])
    assert summary["episodes"] == 2


def test_cli__unknown_ids_and_modules_are_clear_errors(capsys):
    for env_id in ("acme/Nope-v0", "no_such_module_xyz:acme/Toy-v0", "mtrl/Inventory-v9"):
        with pytest.raises(SystemExit):
            cli.main(["play", env_id])
        assert f"environment {env_id!r}" in capsys.readouterr().err
