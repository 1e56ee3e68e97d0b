import asyncio
import json
import tempfile

import gymnasium as gym
import pytest

import mtrl_envs.python_tests.harness as harness
import mtrl_gym  # noqa: F401 - importing it registers the built-in environment ids
from mtrl_envs.python_tests.bank import problems, split_problems
from mtrl_envs.python_tests.harness import format_call
from mtrl_gym.checker import play
from mtrl_gym.sandbox import SandboxInfraError, SandboxLimits

FAST = SandboxLimits(timeout_s=1.0, memory_mb=256)


def call(env, name, **args):
    return env.unwrapped.format.render_calls([(name, args)])


def submit(code):
    return f"<final_output>{json.dumps({'code': code})}</final_output>"


def task_index(env, function):
    return next(
        i for i, t in enumerate(env.unwrapped.tasks()) if t.metadata["function"] == function
    )


def lookup_table_solution(problem):
    """Code that answers the visible tests from a table, and nothing else."""
    table = {json.dumps(c.args): c.expected for c in problem.visible}
    return (
        "import json\n"
        f"TABLE = json.loads({json.dumps(table)!r})\n"
        f"def {problem.name}(*args):\n"
        "    return TABLE.get(json.dumps(list(args)))\n"
    )


@pytest.fixture(scope="module")
def env():
    env = gym.make("mtrl/PythonTests-v0", limits=FAST)
    yield env
    env.close()


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_python_oracle__solves_every_task_of_every_split(split):
    env = gym.make("mtrl/PythonTests-v0", split=split)
    for i in range(len(env.unwrapped.tasks())):
        record = play(env, seed=None, options={"task_index": i}, oracle=True)
        assert len(record) == 3 and "visible tests passed" in record[1]["observation"]
        last = record[-1]
        assert (last["reward"], last["info"]["status"]) == (1.0, "ok"), (i, last["info"]["eval"])
    env.close()


def test_python_grading__hidden_tests_catch_code_fitted_to_the_visible_tests(env):
    for problem in split_problems("train")[:3]:
        code = lookup_table_solution(problem)
        options = {"task_index": task_index(env, problem.name)}
        record = play(
            env,
            seed=None,
            options=options,
            actions=[call(env, "run_tests", code=code), submit(code)],
        )
        assert record[1]["observation"].count(": passed") == len(problem.visible)
        evaluation = record[-1]["info"]["eval"]
        assert record[-1]["reward"] == 0.0 and not evaluation["success"], problem.name
        assert evaluation["visible_passed"] == evaluation["visible_total"]
        assert evaluation["hidden_passed"] < evaluation["hidden_total"]


def test_python_grading__slow_code_that_passes_the_visible_tests_times_out_on_hidden_ones(env):
    naive = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"
    options = {"task_index": task_index(env, "fibonacci")}
    record = play(
        env, seed=None, options=options, actions=[call(env, "run_tests", code=naive), submit(naive)]
    )
    assert "2/2 visible tests passed" in record[1]["observation"]
    evaluation = record[-1]["info"]["eval"]
    assert record[-1]["reward"] == 0.0 and record[-1]["info"]["status"] == "ok"
    assert "timed out" in evaluation["reason"]


def test_python_tool__reports_every_visible_test(env):
    env.reset(options={"task_index": task_index(env, "fizzbuzz")})
    code = "def fizzbuzz(n):\n    print('n is', n)\n    return [] if n < 10 else 1 / 0\n"
    result = env.step(call(env, "run_tests", code=code))[4]["tool_calls"][0]["result"]
    assert result.splitlines()[:3] == [
        "0/2 visible tests passed",
        "test 1: FAILED: fizzbuzz(5) returned [], expected ['1', '2', 'Fizz', '4', 'Buzz']",
        "test 2: ERROR: fizzbuzz(15) raised ZeroDivisionError: division by zero",
    ]
    assert result.endswith("your code printed:\nn is 5\nn is 15\n")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("while True:\n    pass", "timed out"),
        ("import os\nos.system('true')", "not allowed"),
        ("x = bytearray(2 ** 34)", "MemoryError"),
        ("import sys\nsys.exit(3)", "SystemExit: 3"),
        ("import os\nos._exit(0)", "ended the test run before results were reported"),
        ("from mtrl_envs.python_tests import solutions", "importing the grader is not allowed"),
        (f"open({harness.__file__!r}).read()", "reading the grader's files is not allowed"),
        ("def fizzbuzz(n) return []", "SyntaxError: expected ':' (line 1)"),
        ("def fizz(n):\n    return []", "defines no function named 'fizzbuzz'"),
    ],
)
def test_python_tool__hostile_or_broken_code_is_the_agents_error(env, code, expected):
    env.reset(options={"task_index": task_index(env, "fizzbuzz")})
    _, _, terminated, truncated, info = env.step(call(env, "run_tests", code=code))
    assert not (terminated or truncated) and "status" not in info
    assert expected in info["tool_calls"][0]["error"]


def test_python_infra__sandbox_failure_in_the_tool_or_in_grading_is_infra_error(monkeypatch):
    runs = []

    def broken(*args, **kwargs):
        runs.append(args)
        raise SandboxInfraError("could not start the sandbox")

    env = gym.make("mtrl/PythonTests-v0")
    monkeypatch.setattr(harness, "run_python", broken)
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step(call(env, "run_tests", code="pass"))
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    env.reset(options={"task_index": 0})
    runs.clear()
    _, reward, terminated, truncated, info = env.step(submit("pass"))
    assert len(runs) == 1  # graded once: the reward does not run the sandbox again
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    assert info["eval"] == {
        "success": False,
        "status": "infra_error",
        "error": "SandboxInfraError: could not start the sandbox",
    }
    assert info["final_answer"]["value"] == {"code": "pass"}
    # The async runner's path (astep) reports it the same way.
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = asyncio.run(env.unwrapped.astep(submit("pass")))
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    env.close()


def test_python_partial_credit__reward_is_the_fraction_of_hidden_tests_passed():
    env = gym.make("mtrl/PythonTests-v0", partial_credit=True)
    problem = split_problems("train")[0]
    # Right for every n > 0, wrong for n <= 0 (it never returns an empty list).
    code = "def fizzbuzz(n):\n    return [str(i) if i % 3 and i % 5 else ('Fizz' if i % 5 else "
    code += "'Buzz' if i % 3 else 'FizzBuzz') for i in range(1, max(n, 1) + 1)]\n"
    options = {"task_index": task_index(env, problem.name)}
    last = play(env, seed=None, options=options, actions=[submit(code)])[-1]
    hidden = len(problem.hidden)
    assert last["reward"] == (hidden - 2) / hidden and not last["info"]["eval"]["success"]
    env.close()


def test_python_env__sandbox_directories_do_not_leak(tmp_path, monkeypatch):
    # A private temp root for the sandbox's working directories: other processes sharing /tmp
    # cannot disturb the count.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = gym.make("mtrl/PythonTests-v0", limits=FAST)
    play(env, seed=0, oracle=True)
    env.reset(seed=1)
    env.step(call(env, "run_tests", code="while True:\n    pass"))  # a run killed on timeout
    env.close()
    assert list(tmp_path.iterdir()) == []


def test_python_random_agent__scores_zero_without_raising(env):
    env.action_space.seed(0)
    for seed in range(3):
        env.reset(seed=seed)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
        assert reward == 0.0


def test_python_bank__splits_share_no_function_and_hidden_tests_stay_hidden():
    sizes = {s: len(split_problems(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 16, "validation": 4, "test": 4}
    assert len({p.name for p in problems()}) == 24
    env = gym.make("mtrl/PythonTests-v0", split="test")
    for task, problem in zip(env.unwrapped.tasks(), split_problems("test"), strict=True):
        assert len(problem.visible) >= 2 and len(problem.hidden) >= 4
        visible = {format_call(problem.name, c.args) for c in problem.visible}
        for case in problem.hidden:
            shown = format_call(problem.name, case.args)
            assert shown in visible or f"assert {shown} ==" not in task.prompt
    env.close()
