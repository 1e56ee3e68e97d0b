"""Strict validation of suites: every mistake is an error naming the file and the JSON path."""

import json
import re

import pytest

from mtrl_envs.sop import SopSpecError, SopSuite, UnsupportedSuiteError
from tests.envs.sop.synthetic import build_suite


def tool(b, name):
    return b["tools"][name]


def field(b, name, i):
    return b["tools"][name]["returns"]["fields"][i]


# (edit of the behaviour dict, expected message fragment)
CASES = {
    "unknown top-level key": (lambda b: b.update(bogus=1), "$.bogus: unknown key"),
    "wrong format": (
        lambda b: b.update(format="sop/2"),
        "$.format: expected 'sop-tool-behavior/1'",
    ),
    "unknown kind": (
        lambda b: tool(b, "getOrder").update(kind="lookups"),
        "$.tools.getOrder.kind: unknown value 'lookups'",
    ),
    "unknown rule": (
        lambda b: tool(b, "getOrder")["validate"][0].update(rule="nonempty"),
        "$.tools.getOrder.validate[0].rule: unknown value 'nonempty'",
    ),
    "unknown cast": (
        lambda b: field(b, "getOrder", 2).update(cast="integer"),
        "$.tools.getOrder.returns.fields[2].cast: unknown value 'integer'",
    ),
    "unknown on_null": (
        lambda b: field(b, "getOrder", 7).update(on_null="blank"),
        "$.tools.getOrder.returns.fields[7].on_null: unknown value 'blank'",
    ),
    "unknown arg_cast": (
        lambda b: tool(b, "checkQty")["lookup"]["match"][1].update(arg_cast="long"),
        "$.tools.checkQty.lookup.match[1].arg_cast: unknown value 'long'",
    ),
    "unknown field key": (
        lambda b: field(b, "getOrder", 0).update(cast="int"),
        "$.tools.getOrder.returns.fields[0].cast: unknown key",
    ),
    "missing on_none": (
        lambda b: tool(b, "getOrder")["lookup"].pop("on_none"),
        "$.tools.getOrder.lookup: missing required key 'on_none'",
    ),
    "missing params": (
        lambda b: tool(b, "getStatus").pop("params"),
        "$.tools.getStatus: missing required key 'params'",
    ),
    "two value sources": (
        lambda b: field(b, "getOrder", 0).update(const=1),
        "$.tools.getOrder.returns.fields[0]: expected exactly one value source",
    ),
    "placeholder names no parameter": (
        lambda b: tool(b, "getOrder")["validate"][0].update(error="bad {nope}"),
        "$.tools.getOrder.validate[0].error: placeholder {nope} names no parameter",
    ),
    "rule on an unknown parameter": (
        lambda b: tool(b, "getOrder")["validate"][0].update(args=["orderId"]),
        "$.tools.getOrder.validate[0].args[0]: 'orderId' is not a parameter",
    ),
    "if_field names no earlier key": (
        lambda b: tool(b, "checkCode")["returns"]["fields"][1].update(if_field="later"),
        "$.tools.checkCode.returns.fields[1].if_field: 'later' is not an earlier field's key",
    ),
    "duplicate key": (
        lambda b: field(b, "getOrder", 1).update(key="id"),
        "$.tools.getOrder.returns.fields[1].key: duplicate key 'id'",
    ),
    "bad regex": (
        lambda b: tool(b, "getOrder")["validate"][1].update(pattern="(["),
        "$.tools.getOrder.validate[1].pattern: invalid regular expression",
    ),
    "column in a constant tool": (
        lambda b: tool(b, "checkCode")["returns"]["fields"].append({"key": "x", "column": "qty"}),
        "$.tools.checkCode.returns.fields[2].column: only a lookup tool has a row",
    ),
    "unknown table": (
        lambda b: tool(b, "getOrder")["lookup"].update(table="orders"),
        "$.tools.getOrder.lookup.table: no table named 'orders'",
    ),
    "unknown compare": (
        lambda b: tool(b, "getOrder")["lookup"].update(compare="fuzzy"),
        "$.tools.getOrder.lookup.compare: unknown value 'fuzzy'",
    ),
    "unknown column": (
        lambda b: field(b, "getOrder", 2).update(column="quantity"),
        "$.tools.getOrder.returns.fields[2]: no column 'quantity' in table 'main'",
    ),
    "unknown column type": (
        lambda b: b["tables"]["main"]["column_types"].update(ok="boolean"),
        "$.tables.main.column_types.ok: unknown value 'boolean'",
    ),
    "column type for a missing column": (
        lambda b: b["tables"]["main"]["column_types"].update(nope="int"),
        "column_types names columns not in the file: ['nope']",
    ),
    "declared type the data contradicts": (
        lambda b: b["tables"]["main"]["column_types"].update(score="int"),
        "orders.csv: column 'score', row 0: '0.5' is not a valid int",
    ),
    "csv outside the folder": (
        lambda b: b["tables"]["main"].update(csv="../orders.csv"),
        "$.tables.main.csv: '../orders.csv' must be a path inside the suite folder",
    ),
    "unknown loader mode": (
        lambda b: b["task"].update(official_loader_mode="rows"),
        "$.task.official_loader_mode: unknown value 'rows'",
    ),
    "output shown as input": (
        lambda b: b["task"]["input_columns"].append("status"),
        "$.task: output columns would be shown to the agent as inputs: ['status']",
    ),
    "output column not in the csv": (
        lambda b: b["task"].update(output_columns=["status", "nope"]),
        "$.task.output_columns[1]: no column 'nope'",
    ),
    "out of a tool not called earlier": (
        lambda b: b["oracle_plan"][1]["args"]["order_id"].update(out="getStatus"),
        "$.oracle_plan[1].args.order_id.out: 'getStatus' is not called by an earlier step",
    ),
    "input that is not an input column": (
        lambda b: b["oracle_plan"][0]["args"].update(order_id={"input": "status"}),
        "$.oracle_plan[0].args.order_id.input: 'status' is not an input column",
    ),
    "unknown condition": (
        lambda b: b["oracle_plan"][7].update(when={"row_is": "gift"}),
        "$.oracle_plan[7].when: unknown value 'row_is'",
    ),
    "unknown expect": (
        lambda b: b["oracle_plan"][0].update(expect="fine"),
        "$.oracle_plan[0].expect: unknown value 'fine'",
    ),
    "unlisted step for a listed tool": (
        lambda b: b["oracle_plan"][0].update(unlisted=True),
        "$.oracle_plan[0].tool: 'getOrder' is not in unlisted_tools",
    ),
    "tool both listed and unlisted": (
        lambda b: b["unlisted_tools"].update(getOrder=b["tools"]["getOrder"]),
        "$.unlisted_tools: tools both listed and unlisted: ['getOrder']",
    ),
    "unsupported tool in a supported suite": (
        lambda b: b["tools"].update(getOrder={"kind": "unsupported", "reason": "live API"}),
        "$.tools.getOrder.kind: an 'unsupported' tool in a suite marked supported",
    ),
    "advertised tool without behaviour": (
        lambda b: b["tools"].pop("byRegionStrict"),
        "toolspecs.json advertises tools with no behaviour: ['byRegionStrict']",
    ),
    "behaviour for a tool not advertised": (
        lambda b: b["tools"].update(extra=b["tools"]["stubEcho"]),
        "$.tools describes tools toolspecs.json does not advertise: ['extra']",
    ),
    "columns disagree with metadata.json": (
        lambda b: b["task"].update(output_columns=["status"]),
        "$.task.output_columns ['status'] disagrees with metadata.json",
    ),
    "duplicate split id": (
        lambda b: b["task"].update(id_column="split"),
        "$.task.id_column 'split' must be unique and filled",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sop_suite_load__rejects_invalid_behaviour_with_the_json_path(tmp_path, case):
    edit, message = CASES[case]
    folder = build_suite(tmp_path / "s", edit=edit)
    with pytest.raises(SopSpecError, match=re.escape(message)) as info:
        SopSuite.load(folder)
    assert not isinstance(info.value, UnsupportedSuiteError)


def test_sop_suite_load__refuses_an_unsupported_suite_with_its_reason(tmp_path):
    def edit(b):
        b.clear()
        b.update(
            {
                "format": "sop-tool-behavior/1",
                "domain": "live_shop",
                "supported": False,
                "reason": "tools call a live inventory service",
                "tools": {"x": "partial"},
            }
        )

    folder = build_suite(tmp_path / "s", edit=edit)
    with pytest.raises(
        UnsupportedSuiteError, match="live_shop is marked unsupported.*live inventory"
    ):
        SopSuite.load(folder)


def test_sop_suite_load__missing_files_and_bad_json_are_clear(tmp_path):
    folder = build_suite(tmp_path / "s")
    (folder / "metadata.json").unlink()
    with pytest.raises(SopSpecError, match=r"metadata\.json: file not found"):
        SopSuite.load(folder)
    folder = build_suite(tmp_path / "t")
    (folder / "tool_behavior.json").write_text("{oops")
    with pytest.raises(SopSpecError, match=r"tool_behavior\.json: not valid JSON"):
        SopSuite.load(folder)
    with pytest.raises(SopSpecError, match="not a folder"):
        SopSuite.load(tmp_path / "missing")


def test_sop_suite_load__behaviour_can_live_in_another_folder(tmp_path):
    folder = build_suite(tmp_path / "data")
    specs = tmp_path / "specs"
    specs.mkdir()
    (folder / "tool_behavior.json").rename(specs / "tool_behavior.json")
    with pytest.raises(SopSpecError, match="file not found"):
        SopSuite.load(folder)
    by_folder = SopSuite.load(folder, behavior_path=specs)
    by_file = SopSuite.load(folder, behavior_path=specs / "tool_behavior.json")
    assert by_folder.name == by_file.name == "synthetic_orders"


def test_sop_suite_load__records_checksums_and_accepts_openai_toolspecs(tmp_path):
    import hashlib

    bedrock = SopSuite.load(build_suite(tmp_path / "a"))
    openai = SopSuite.load(build_suite(tmp_path / "b", openai_specs=True))
    assert bedrock.tool_schemas == openai.tool_schemas
    assert set(bedrock.checksums) == {"sop", "toolspecs", "metadata", "csv", "behavior"}
    csv_sha = hashlib.sha256((tmp_path / "a" / "orders.csv").read_bytes()).hexdigest()
    assert bedrock.checksums["csv"] == csv_sha
    assert bedrock.checksums["toolspecs"] != openai.checksums["toolspecs"]
    assert bedrock.data_commit == "0" * 40 and bedrock.official_loader_mode == "split"
    assert json.loads(json.dumps(bedrock.checksums)) == bedrock.checksums
