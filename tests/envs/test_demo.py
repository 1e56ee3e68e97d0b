import json

from mtrl_envs import demo


def test_demo__oracle_solves_the_default_env(capsys):
    summary = demo.main(["--episodes", "12"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == summary
    assert summary["success_rate"] == 1.0 and summary["statuses"] == ["ok"]
    assert "--- turn 1: assistant ---" in out


def test_demo__every_format_works(capsys):
    for fmt in ("json", "react"):
        summary = demo.main(["--episodes", "4", "--tool-format", fmt])
        assert summary["success_rate"] == 1.0
