import asyncio
import json
import tempfile

import gymnasium as gym
import pytest

import mtrl_envs.sql_query.execution as execution
import mtrl_gym  # noqa: F401 - importing it registers the built-in environment ids
from mtrl_envs.sql_query.env import DEFAULT_NUM_TASKS, SqlQueryEnv
from mtrl_envs.sql_query.shop import TEMPLATES
from mtrl_gym.checker import play
from mtrl_gym.sandbox import SandboxInfraError, SandboxLimits


def call(env, name, **args):
    return env.unwrapped.format.render_calls([(name, args)])


def submit(sql):
    return f"<final_output>{json.dumps({'sql': sql})}</final_output>"


def task_index(env, template):
    return next(
        i for i, t in enumerate(env.unwrapped.tasks()) if t.metadata["template"] == template
    )


def graded(env, template, sql):
    """Submits ``sql`` as the answer to the first task of ``template``; returns the last step."""
    options = {"task_index": task_index(env, template)}
    return play(env, seed=None, options=options, actions=[submit(sql)])[-1]


@pytest.fixture(scope="module")
def env():
    env = gym.make("mtrl/SqlQuery-v0")
    yield env
    env.close()


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_sql_oracle__solves_every_task_of_every_split(split):
    env = gym.make("mtrl/SqlQuery-v0", split=split)
    assert len(env.unwrapped.tasks()) == DEFAULT_NUM_TASKS[split]
    for i in range(len(env.unwrapped.tasks())):
        last = play(env, seed=None, options={"task_index": i}, oracle=True)[-1]
        assert (last["reward"], last["info"]["status"]) == (1.0, "ok"), (i, last["info"]["eval"])
    env.close()


def test_sql_grading__an_equivalent_but_different_query_passes_and_a_wrong_one_fails(env):
    template = "customers_without_orders"
    equivalent = (
        "SELECT name FROM customers WHERE customer_id NOT IN (SELECT customer_id FROM orders)"
        " ORDER BY name DESC"
    )
    last = graded(env, template, equivalent)
    assert last["reward"] == 1.0 and last["info"]["eval"]["success"]
    last = graded(env, template, "SELECT name FROM customers")
    assert last["reward"] == 0.0 and "row(s)" in last["info"]["eval"]["reason"]
    last = graded(env, template, "SELECT name, city FROM customers WHERE customer_id > 100")
    assert last["info"]["eval"]["reason"] == "expected 1 column(s), got 2"
    # Numbers compare by value: a float count equals the integer count.
    sql = env.unwrapped.tasks()[task_index(env, "count_customers_in_city")].answer["sql"]
    last = graded(env, "count_customers_in_city", sql.replace("COUNT(*)", "SUM(1.0)"))
    assert last["reward"] == 1.0


def test_sql_grading__row_order_counts_only_when_the_question_asks_for_it(env):
    gold = env.unwrapped.tasks()[task_index(env, "top_customers")].answer["sql"]
    reversed_order = f"SELECT * FROM ({gold}) ORDER BY n ASC, name DESC"
    last = graded(env, "top_customers", reversed_order)
    assert last["reward"] == 0.0
    assert last["info"]["eval"]["reason"] == "the rows are right but in the wrong order"
    gold = env.unwrapped.tasks()[task_index(env, "products_per_category")].answer["sql"]
    assert graded(env, "products_per_category", f"{gold} ORDER BY 2, 1 DESC")["reward"] == 1.0


def test_sql_grading__a_failing_or_missing_query_scores_zero(env):
    last = graded(env, "count_customers_in_city", "SELEC 1")
    assert last["info"]["status"] == "ok" and last["reward"] == 0.0
    assert last["info"]["eval"]["reason"].startswith("the query failed: OperationalError")
    options = {"task_index": 0}
    last = play(env, seed=None, options=options, actions=['<final_output>{"q": 1}</final_output>'])
    assert last[-1]["reward"] == 0.0 and not last[-1]["info"]["eval"]["success"]


def test_sql_tool__agent_errors_are_observations_and_the_database_is_read_only():
    env = gym.make("mtrl/SqlQuery-v0", limits=SandboxLimits(timeout_s=1.0, memory_mb=256))
    env.reset(options={"task_index": 0})
    scripts = {
        "SELECT nope FROM customers": "no such column: nope",
        "DELETE FROM customers": "attempt to write a readonly database",
        "SELECT 1; SELECT 2": "one statement at a time",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r": (
            "timed out"
        ),
    }
    for sql, expected in scripts.items():
        _, _, terminated, truncated, info = env.step(call(env, "run_query", sql=sql))
        assert not (terminated or truncated) and expected in info["tool_calls"][0]["error"], sql
    info = env.step(call(env, "run_query", sql="SELECT COUNT(*) FROM customers"))[4]
    assert json.loads(info["tool_calls"][0]["result"])["rows"][0][0] >= 8
    env.close()


def test_sql_tool__large_results_are_cut_to_max_rows():
    env = gym.make("mtrl/SqlQuery-v0", max_rows=5)
    env.reset(options={"task_index": 0})
    info = env.step(call(env, "run_query", sql="SELECT * FROM order_items a, order_items b"))[4]
    result = json.loads(info["tool_calls"][0]["result"])
    assert len(result["rows"]) == 5 and result["row_count"] > 100
    assert result["note"] == f"only the first 5 of {result['row_count']} rows are shown"
    env.close()


def test_sql_infra__sandbox_failure_in_the_tool_or_in_grading_is_infra_error(monkeypatch):
    runs = []

    def broken(*args, **kwargs):
        runs.append(args)
        raise SandboxInfraError("could not start the sandbox")

    env = gym.make("mtrl/SqlQuery-v0")
    monkeypatch.setattr(execution, "run_sql", broken)
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step(call(env, "run_query", sql="SELECT 1"))
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    env.reset(options={"task_index": 0})
    runs.clear()
    _, reward, terminated, truncated, info = env.step(submit("SELECT 1"))
    assert len(runs) == 1  # graded once: the reward does not run the sandbox again
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    assert info["eval"] == {
        "success": False,
        "status": "infra_error",
        "error": "SandboxInfraError: could not start the sandbox",
    }
    assert info["final_answer"]["value"] == {"sql": "SELECT 1"}
    # The async runner's path (astep) reports it the same way.
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = asyncio.run(env.unwrapped.astep(submit("SELECT 1")))
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    env.close()


def test_sql_env__databases_and_sandboxes_are_removed_at_reset_and_close(tmp_path, monkeypatch):
    # A private temp root (the sandbox's working directories go there too): other processes
    # sharing /tmp cannot disturb the count.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = gym.make("mtrl/SqlQuery-v0")
    env.reset(seed=0)
    first = env.unwrapped.database_path
    env.step(call(env, "run_query", sql="SELECT 1"))
    env.reset(seed=1)
    assert not first.exists() and env.unwrapped.database_path.exists()
    env.close()
    assert not env.unwrapped.database_path.exists()
    assert list(tmp_path.iterdir()) == []


def test_sql_random_agent__scores_zero_without_raising(env):
    env.action_space.seed(0)
    for seed in range(3):
        env.reset(seed=seed)
        done = False
        while not done:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        assert reward == 0.0 and info["status"] in ("truncated", "format_error")


def test_sql_tasks__splits_are_disjoint_and_every_template_is_used():
    splits = {
        s: SqlQueryEnv(split=s, num_tasks=10).tasks() for s in ("train", "validation", "test")
    }
    seeds = [{t.metadata["seed"] for t in tasks} for tasks in splits.values()]
    assert not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])
    assert {t.metadata["template"] for t in splits["test"]} == {f.__name__ for f in TEMPLATES}
    assert [t.prompt for t in SqlQueryEnv(split="test").tasks()] == [
        t.prompt for t in splits["test"][:5]
    ]
    with pytest.raises(ValueError, match="split must be one of"):
        SqlQueryEnv(split="dev")
