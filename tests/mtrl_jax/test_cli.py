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
