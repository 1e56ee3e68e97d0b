"""Checks every authored suite's files without the engine: reproducible, consistent, replayable."""

import collections
import importlib
import json
import sys

import pytest

from tests.envs.suites.replay import AUTHORED, FILES, call_tool, load, play_oracle, present

# pandas' default NA spellings: no cell may use one, so a reader with default NA handling agrees.
PANDAS_NA = {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"}
PANDAS_NA |= {"1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
DEFAULT_SIZES = {name: (200, 50, 50) for name in AUTHORED} | {"quickstart": (400, 50, 100)}
MANIFEST = {
    "format": "mtrl-sop-suite/1",
    "sop": "sop.txt",
    "toolspecs": "tools.json",
    "metadata": "metadata.json",
    "behavior": "behavior.json",
}
RECOVERY_SUITES = ("refunds", "hazmat", "kyb", "routing")
suites = pytest.mark.parametrize("name", AUTHORED)


def condition_columns(cond):
    ((op, arg),) = cond.items()
    if op == "all":
        return {c for sub in arg for c in condition_columns(sub)}
    if op == "not":
        return condition_columns(arg)
    return {arg[0]} if op == "row_ne" else {arg}


def generator(name):
    return importlib.import_module(f"mtrl_envs.suites.{name}.generate")


@suites
def test_generate__reproduces_the_committed_files_byte_for_byte(name):
    files = generator(name).generate()
    assert sorted(files) == sorted(FILES)
    for file, text in files.items():
        assert (load(name).folder / file).read_bytes() == text.encode("utf-8"), file


@suites
def test_generate__same_seed_same_bytes_other_seed_other_rows(name):
    gen = generator(name)
    first, again = gen.generate(1, 20, 5, 5), gen.generate(1, 20, 5, 5)
    assert first == again
    assert gen.generate(2, 20, 5, 5)["tasks.csv"] != first["tasks.csv"]
    assert first["sop.txt"] == load(name).text["sop.txt"]  # the procedure does not depend on seed


@suites
def test_main__writes_what_generate_returns(name, tmp_path, monkeypatch):
    argv = ["generate", "--seed", "3", "--train", "8", "--val", "4", "--test", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    generator(name).main()
    expected = generator(name).generate(3, 8, 4, 4)
    assert {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()} == expected


@suites
def test_manifest__names_the_files_of_the_folder(name):
    suite = load(name)
    assert json.loads(suite.text["suite.json"]) == MANIFEST
    assert (suite.folder.parent / "README.md").is_file()
    behavior = suite.behavior
    assert behavior["format"] == "sop-tool-behavior/1" and behavior["supported"] is True
    assert behavior["task"]["csv"] == behavior["tables"]["main"]["csv"] == "tasks.csv"
    assert behavior["task"]["split_column"] == "split" and behavior["task"]["id_column"] == "id"
    assert suite.metadata["name"] == behavior["domain"] == name
    for key in ("input_columns", "output_columns"):
        assert suite.metadata[key] == behavior["task"][key]


@suites
def test_tools__every_spec_has_a_behaviour_and_matching_params(name):
    suite = load(name)
    specs = [s["toolSpec"] for s in suite.tool_specs]
    behaviours = suite.behavior["tools"]
    assert [s["name"] for s in specs] == list(behaviours)
    for spec in specs:
        params = behaviours[spec["name"]]["params"]
        schema = spec["inputSchema"]["json"]
        assert spec["description"] and schema["type"] == "object"
        assert schema["required"] == params["required"]
        assert set(schema["properties"]) == {*params["required"], *params["optional"]}
        assert all(p["description"] for p in schema["properties"].values())


@suites
def test_behavior__every_column_exists_and_has_a_type(name):
    suite = load(name)
    behavior = suite.behavior
    types = behavior["tables"]["main"]["column_types"]
    assert list(types) == suite.header  # every column typed, nothing else
    assert set(types.values()) <= {"str", "int", "float", "bool"}
    task = behavior["task"]
    named = {*task["input_columns"], *task["output_columns"], "id", "split"}
    for tool in behavior["tools"].values():
        assert tool["kind"] == "lookup" and tool["lookup"]["compare"] == "pandas_eq"
        assert tool["lookup"]["on_multiple"] == "first"
        named |= {m["column"] for m in tool["lookup"]["match"]}
        for field in tool["returns"]["fields"]:
            named.add(field["column"])
            assert field["cast"] == types[field["column"]] and field["on_null"] == "null"
        for rule in tool["validate"]:
            assert rule["rule"] in ("truthy", "regex")
            args = rule["args"] if rule["rule"] == "truthy" else [rule["arg"]]
            assert set(args) <= set(tool["params"]["required"])
    assert named <= set(types)
    # Inputs come first, outputs last, so the presentation order is the order listed.
    columns = suite.header
    assert columns[2 : 2 + len(task["input_columns"])] == task["input_columns"]
    assert columns[-len(task["output_columns"]) :] == task["output_columns"]


@suites
def test_tasks__every_cell_prints_back_unchanged_and_avoids_na_spellings(name):
    suite = load(name)
    for raw, row in zip(suite.raw_rows, suite.rows, strict=True):
        for column, cell in raw.items():
            assert cell not in PANDAS_NA, (row["id"], column)
            assert cell == ("" if row[column] is None else present(row[column])), (column, cell)
            if column in (*suite.input_columns, *suite.output_columns, "id", "split"):
                assert cell != "", (row["id"], column)  # inputs and answers are never missing


@suites
def test_tasks__pandas_reads_the_declared_types(name):
    pd = pytest.importorskip("pandas")
    suite = load(name)
    types = suite.behavior["tables"]["main"]["column_types"]
    frame = pd.read_csv(suite.folder / "tasks.csv", dtype={c: types[c] for c in types})
    for i in range(0, len(frame), 7):
        for column in suite.input_columns:
            assert str(frame[column].iloc[i]) == suite.raw_rows[i][column]


@suites
def test_oracle_plan__steps_name_tools_columns_and_earlier_steps(name):
    suite = load(name)
    behavior = suite.behavior
    called: set[str] = set()
    for step in behavior["oracle_plan"]:
        assert step["tool"] in behavior["tools"]
        params = behavior["tools"][step["tool"]]["params"]
        assert set(step["args"]) == set(params["required"])
        for src in step["args"].values():
            ((kind, value),) = [(k, v) for k, v in src.items() if k != "key"]
            if kind == "input":
                assert value in suite.input_columns
            elif kind == "hidden":
                assert value in suite.header
            else:
                assert kind == "out" and value in called
                fields = behavior["tools"][value]["returns"]["fields"]
                assert src["key"] in [f["key"] for f in fields]
        expect = step.get("expect", "ok")
        assert expect == "ok" or set(expect) == {"error_when"}
        for cond in (step.get("when"), expect.get("error_when") if expect != "ok" else None):
            if cond is not None:
                assert condition_columns(cond) <= set(suite.header)
        called.add(step["tool"])


@suites
def test_oracle_plan__plays_on_every_row_with_the_expected_errors(name):
    suite = load(name)
    for row in suite.rows:
        made = play_oracle(suite, row)
        errors = [error for _, error in made if error is not None]
        # Only recovery rows see an error, and it is the format error of the raw id.
        messy = [c for c in suite.header if c.endswith("_is_messy")]
        assert len(errors) == sum(bool(row[c]) for c in messy)
        assert all(e.startswith("Invalid ") and "expected the canonical form" in e for e in errors)


@suites
def test_lookups__rows_sharing_a_key_return_identical_results(name):
    suite = load(name)
    for tool_name, tool in suite.behavior["tools"].items():
        keys = [m["column"] for m in tool["lookup"]["match"]]
        returned = [f["column"] for f in tool["returns"]["fields"]]
        seen = collections.defaultdict(set)
        for row in suite.rows:
            seen[tuple(row[k] for k in keys)].add(tuple(row[c] for c in returned))
        assert all(len(v) == 1 for v in seen.values()), tool_name


@suites
def test_splits__sizes_match_the_defaults_and_ids_are_unique(name):
    suite = load(name)
    ids = [row["id"] for row in suite.rows]
    assert len(set(ids)) == len(ids)
    by_split = collections.defaultdict(set)
    for row in suite.rows:
        by_split[row["split"]].add(row["id"])
    sizes = tuple(len(by_split[s]) for s in ("train", "validation", "test"))
    assert sizes == DEFAULT_SIZES[name] and set(by_split) == {"train", "validation", "test"}
    assert not (by_split["train"] & by_split["validation"] or by_split["train"] & by_split["test"])
    assert suite.behavior["source"]["sizes"] == dict(
        zip(("train", "validation", "test"), sizes, strict=True)
    )


@pytest.mark.parametrize("name", RECOVERY_SUITES)
def test_outputs__no_value_holds_more_than_half_of_the_tasks(name):
    suite = load(name)
    for column in suite.output_columns:
        counts = collections.Counter(row[column] for row in suite.rows)
        assert len(counts) >= 3, column
        assert max(counts.values()) <= len(suite.rows) / 2, (column, counts)


@pytest.mark.parametrize("name", RECOVERY_SUITES)
def test_recovery__messy_ids_fail_the_format_rule_and_canonical_ids_pass(name):
    suite = load(name)
    plan = suite.behavior["oracle_plan"]
    first, retry = plan[0], plan[1]
    raw_column = first["args"][next(iter(first["args"]))]["input"]
    clean_column = retry["args"][next(iter(retry["args"]))]["hidden"]
    messy_column = first["expect"]["error_when"]["row_truthy"]
    param = next(iter(first["args"]))
    messy = [row for row in suite.rows if row[messy_column]]
    assert 0.2 <= len(messy) / len(suite.rows) <= 0.4
    for row in suite.rows:
        assert (row[raw_column] != row[clean_column]) == row[messy_column]
        call_tool(suite, first["tool"], {param: row[clean_column]})  # the canonical id works
    # Every kind of mistake occurs: lower case, missing dash, a space instead of the dash.
    raws = [row[raw_column] for row in messy]
    assert any(r != r.upper() for r in raws) and any(" " in r for r in raws)
    assert any("-" not in r and " " not in r for r in raws)
