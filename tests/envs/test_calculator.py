import json
from fractions import Fraction

import gymnasium as gym
import pytest

import mtrl_envs.calculator.env as calculator_env
import mtrl_gym  # noqa: F401 - importing it registers the built-in environment ids
from mtrl_envs.calculator.arithmetic import CalculatorError, evaluate, format_value
from mtrl_envs.calculator.env import DEFAULT_NUM_TASKS, CalculatorEnv
from mtrl_envs.calculator.problems import TEMPLATES
from mtrl_gym.checker import play


def call(env, name, **args):
    return env.unwrapped.format.render_calls([(name, args)])


def answer(value):
    return f"<final_output>{json.dumps({'answer': value})}</final_output>"


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_calculator_oracle__solves_every_task_of_every_split(split):
    env = gym.make("mtrl/Calculator-v0", split=split)
    assert len(env.unwrapped.tasks()) == DEFAULT_NUM_TASKS[split]
    for i in range(len(env.unwrapped.tasks())):
        last = play(env, seed=None, options={"task_index": i}, oracle=True)[-1]
        assert (last["reward"], last["info"]["status"]) == (1.0, "ok"), i
    env.close()


@pytest.mark.parametrize(
    ("expression", "shown"),
    [
        ("0.1 + 0.2", "0.3"),  # exact decimals, not binary floats
        ("(2 + 3) * 4 ** 2", "80"),
        ("10 / 4", "2.5"),
        ("-99 / 8", "-12.375"),
        ("10 / 3", "10/3 (about 3.3333333333)"),
        ("7 // 2 + 7 % 2", "4"),
        ("2 ** -2", "0.25"),
        ("1_000 * 1.5e-3", "1.5"),
        ("+" * 150 + "1", "1"),
    ],
)
def test_calculator_arithmetic__exact_results(expression, shown):
    assert format_value(evaluate(expression)) == shown


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "found a function call"),
        ("().__class__.__bases__", "found an attribute"),
        ("x + 1", "found a name"),
        ("'a' * 10", "only numbers are allowed"),
        ("9 ** 9 ** 9", "exponents are limited"),
        ("1000 ** 900", "the result would be too large"),
        ("3 ** 900", "a number in the calculation is too large"),
        ("2 ** 0.5", "exponents must be whole numbers"),
        ("1 / (3 - 3)", "division by zero"),
        ("1e999", "too large"),
        ("(" * 201 + "1" + ")" * 201, "too many nested parentheses"),
        ("1 +", "invalid expression"),
        ("1" * 501, "longer than 500 characters"),
    ],
)
def test_calculator_arithmetic__hostile_or_invalid_expressions_are_refused(expression, message):
    with pytest.raises(CalculatorError) as caught:
        evaluate(expression)
    assert message in str(caught.value)


def test_calculator_tool__errors_are_observations_and_the_episode_goes_on():
    env = gym.make("mtrl/Calculator-v0")
    env.reset(options={"task_index": 0})
    _, _, terminated, truncated, info = env.step(call(env, "calculator", expression="9**9**9"))
    assert not (terminated or truncated) and "status" not in info
    assert info["tool_calls"][0]["error"] == "exponents are limited to 1000"
    info = env.step(call(env, "calculator", expression="6 * 7"))[4]
    assert info["tool_calls"][0]["result"] == "42"
    env.close()


def test_calculator_tool__an_unexpected_failure_is_infra_error(monkeypatch):
    def broken(expression):
        raise RuntimeError("evaluator bug")

    monkeypatch.setattr(calculator_env, "evaluate", broken)
    env = gym.make("mtrl/Calculator-v0")
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step(call(env, "calculator", expression="1"))
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    env.close()


def test_calculator_grading__exact_value_only():
    env = gym.make("mtrl/Calculator-v0")
    index = next(
        i for i, t in enumerate(env.unwrapped.tasks()) if isinstance(t.answer["answer"], float)
    )
    exact = env.unwrapped.tasks()[index].answer["answer"]
    whole = next(t for t in env.unwrapped.tasks() if isinstance(t.answer["answer"], int))

    def reward(task_index, text):
        return play(env, seed=None, options={"task_index": task_index}, actions=[text])[-1]

    assert reward(index, answer(exact))["reward"] == 1.0
    assert reward(index, answer(round(exact + 0.01, 2)))["reward"] == 0.0
    assert reward(index, answer(str(exact)))["reward"] == 0.0  # a string is not a number
    whole_index = env.unwrapped.tasks().index(whole)
    assert reward(whole_index, answer(float(whole.answer["answer"])))["reward"] == 1.0
    env.close()


def test_calculator_tasks__answers_are_the_exact_values_of_their_expressions():
    for task in CalculatorEnv(split="validation").tasks():
        value = evaluate(task.metadata["expression"])
        assert Fraction(str(task.answer["answer"])) == value, task.id


def test_calculator_tasks__splits_are_disjoint_and_every_template_is_used():
    splits = {s: CalculatorEnv(split=s).tasks() for s in ("train", "validation", "test")}
    prompts = [{t.prompt for t in tasks} for tasks in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    names = {f.__name__ for f in TEMPLATES}
    assert all({t.metadata["template"] for t in tasks} == names for tasks in splits.values())
    with pytest.raises(ValueError, match="split must be one of"):
        CalculatorEnv(split="dev")


def test_calculator_random_agent__scores_zero_without_raising():
    env = gym.make("mtrl/Calculator-v0")
    env.action_space.seed(0)
    for seed in range(4):
        env.reset(seed=seed)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
        assert reward == 0.0
    env.close()
