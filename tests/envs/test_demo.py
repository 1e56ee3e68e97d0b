import json

from mtrl_envs import demo


def test_demo__oracle_solves_the_default_env(capsys):
    summary = demo.main([])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == summary
    assert summary["env"] == demo.DEFAULT_ENV and summary["episodes"] == 12
    assert summary["success_rate"] == 1.0 and summary["statuses"] == {"ok": 12}
    assert "--- turn 1: assistant ---" in out and "<final_output>" in out


def test_demo__other_formats_and_later_options_win(capsys):
    for fmt in ("json", "react"):
        summary = demo.main(["--tool-format", fmt, "--episodes", "4"])
        assert summary["success_rate"] == 1.0 and summary["episodes"] == 4
