"""Fidelity on the real SOP-Bench folders: the oracle scores 100% strict on every row.

The data is read from ``../shared/sop_bench`` next to the repository (evaluation-only data under
CC BY-NC 4.0: never copied into the repository, never used for training). Without it these tests
skip. For every supported domain each row is played through the environment with real tool calls
(``expect`` checked on every call), then presentation and typing are compared with pandas when it
is installed, and one domain goes through ``check_env`` and ``check_reproducible``.
"""

import csv
import json

import gymnasium as gym
import pytest
from gymnasium.envs.registration import EnvSpec

from mtrl_envs.sop import SopEnv, SopSuite, UnsupportedSuiteError, suite_metrics
from mtrl_envs.sop.table import present
from mtrl_gym import check_env, check_reproducible, play
from tests.conftest import SOP_BENCH_DATA, SOP_BENCH_MISSING

SHARED = SOP_BENCH_DATA
DOMAINS = (
    sorted(p.name for p in SHARED.iterdir() if (p / "tool_behavior.json").is_file())
    if SHARED.is_dir()
    else []
)
pytestmark = pytest.mark.skipif(not DOMAINS, reason=SOP_BENCH_MISSING)
PARAMS = DOMAINS or ["<no data>"]


def supported(domain: str) -> bool:
    raw = json.loads((SHARED / domain / "tool_behavior.json").read_text(encoding="utf-8"))
    return raw.get("supported", True) is not False


@pytest.fixture(scope="module")
def suites():
    cache: dict[str, SopSuite] = {}

    def get(domain: str) -> SopSuite:
        if not supported(domain):
            with pytest.raises(UnsupportedSuiteError):
                SopSuite.load(SHARED / domain)
            pytest.skip(f"{domain} is marked unsupported (refused, as it must be)")
        if domain not in cache:
            cache[domain] = SopSuite.load(SHARED / domain)
        return cache[domain]

    return get


@pytest.mark.parametrize("domain", PARAMS)
def test_fidelity__oracle_scores_100_percent_strict_on_every_row(suites, domain):
    suite = suites(domain)
    with open(suite.folder / suite.behavior["task"]["csv"], encoding="utf-8-sig", newline="") as f:
        rows = sum(1 for r in csv.reader(f) if r) - 1
    env = SopEnv(suite)
    assert len(env.tasks()) == rows
    finals = []
    for index in range(rows):
        record = play(env, seed=None, options={"task_index": index}, oracle=True)
        last = record[-1]
        assert last["terminated"] and last["reward"] == 1.0, (domain, index, last["info"]["eval"])
        finals.append(last["info"])
    env.close()
    metrics = suite_metrics(finals)
    assert metrics["tsr"] == metrics["ecr"] == metrics["ctsr"] == 1.0
    assert metrics["tsr_compatible"] == 1.0 and metrics["tasks"] == rows


@pytest.mark.parametrize("domain", PARAMS)
def test_fidelity__presentation_and_typing_match_pandas(suites, domain):
    suite = suites(domain)
    pd = pytest.importorskip("pandas", reason="pandas is the reference, not a dependency")
    for name, spec in suite.behavior["tables"].items():
        table = suite.tables[name]
        frame = pd.read_csv(
            suite.folder / spec["csv"], na_values=spec["na_values"], keep_default_na=False
        )
        assert list(frame.columns) == list(table.columns)
        for column in frame.columns:
            theirs = [str(v) for v in frame[column]]
            ours = [present(table.value(i, column)) for i in range(len(table))]
            assert ours == theirs, (domain, column)
    frame = pd.read_csv(
        suite.folder / suite.behavior["task"]["csv"],
        keep_default_na=False,
        na_values=suite.behavior["tables"]["main"]["na_values"],
    )
    inputs = [c for c in frame.columns if c in suite.behavior["task"]["input_columns"]]
    for index in range(len(frame)):
        expected = "\n".join(f"{c}: {frame[c].iloc[index]}" for c in inputs)
        assert suite.present_input(index) == expected, (domain, index)


@pytest.mark.parametrize("domain", PARAMS)
def test_fidelity__task_prompt_structure(suites, domain):
    suite = suites(domain)
    env = SopEnv(suite)
    for index in (0, len(env.tasks()) // 2, len(env.tasks()) - 1):
        _, info = env.reset(options={"task_index": index})
        system, user = info["messages"]
        assert system["content"].startswith(suite.sop_text.rstrip())
        for column in suite.output_columns:
            assert json.dumps(column) in system["content"].rsplit("\n\n", 1)[-1]
        lines = user["content"].split("\n")
        assert [line.split(": ", 1)[0] for line in lines] == suite.input_columns
        assert {t["function"]["name"] for t in info["tools"]} == set(suite.behavior["tools"])


def test_fidelity__one_domain_passes_check_env_and_check_reproducible(suites):
    domain = DOMAINS[0]
    suite = suites(domain)
    spec = EnvSpec(
        id="SopBenchCheck-v0",
        entry_point="mtrl_envs.sop.env:SopEnv",
        kwargs={"suite": str(SHARED / domain)},
        disable_env_checker=True,
    )
    check_env(gym.make(spec))
    assert check_reproducible(lambda: SopEnv(suite), seeds=(0, 1)) == 12
