"""A small synthetic SOP suite that exercises every construct of ``sop-tool-behavior/1``.

Rows (``orders.csv``), with what each is for:

- row 0, ``O-1``: every value present; the happy path of every tool.
- row 1, ``O-2``: empty ``gift``, ``note`` and ``score`` (NaN handling and ``on_null``), ``70.0``.
- row 2, ``O-3``: ``NA`` note, tiny float ``1e-05``, missing region, JSON that does not parse,
  a cell holding a quoted literal (parsed twice), the only ``test`` split row.

``build_suite(tmp_path, edit=fn)`` writes the folder; ``fn`` may change the behaviour dict (a deep
copy) before it is written.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CSV = (
    "order_id,qty,price,express,gift,note,items,owners,metrics,score,region,split,status,ok\n"
    "O-1,3,70.1,True,True,fragile,\"[{'sku': 'A1', 'state': 'ok'}]\","
    '"[{\'name\': \'Ann\', \'id\': 1}]","{""a"": 1}",0.5,north,train,shipped,True\n'
    "O-2,70,70.0,False,,,\"[{'sku': 'B2', 'state': 'late'}]\","
    "\"[{'name': 'Bob', 'id': 2}]\",{},,north,train,delayed,False\n"
    "O-3,5,1e-05,True,False,NA,\"\"\"['q']\"\"\",\"[{'name': 'Cy', 'id': 3}]\",not json,2.0,,"
    "test,in-progress,\n"
)

SOP = "Standard procedure for orders.\n1. Look the order up.\n2. Decide its status.\n"

P = {"required": ["order_id"], "optional": {}, "reject_unknown": True}


def _lookup(on_none: dict[str, Any], on_multiple: Any = "first", **extra: Any) -> dict[str, Any]:
    match = [{"column": "order_id", "arg": "order_id"}]
    return {
        "table": "main",
        "compare": "pandas_eq",
        "match": match,
        "on_none": on_none,
        "on_multiple": on_multiple,
        **extra,
    }


NOT_FOUND = {"error": "No order {order_id}"}

TOOLS: dict[str, Any] = {
    "getOrder": {
        "kind": "lookup",
        "params": {
            "required": ["order_id"],
            "optional": {"verbose": False},
            "reject_unknown": True,
        },
        "validate": [
            {"rule": "truthy", "args": ["order_id"], "error": "Missing order_id"},
            {
                "rule": "regex",
                "arg": "order_id",
                "pattern": "O-\\d+",
                "error": "Bad id: {order_id}",
            },
        ],
        "lookup": _lookup({"error": "No order {order_id}"}, {"error": "Multiple {order_id}"}),
        "returns": {
            "shape": "object",
            "fields": [
                {"key": "id", "arg": "order_id"},
                {"key": "verbose", "arg": "verbose"},
                {"key": "qty", "column": "qty", "cast": "int"},
                {"key": "price", "column": "price", "cast": "raw"},
                {"key": "price_text", "column": "price", "cast": "str"},
                {"key": "express", "column": "express", "cast": "bool"},
                {"key": "gift", "column": "gift"},
                {"key": "note", "column": "note", "cast": "raw", "on_null": "empty_string"},
                {"key": "kind", "const": "order", "notes": "notes are allowed everywhere"},
            ],
        },
    },
    "getDetails": {
        "kind": "lookup",
        "params": P,
        "lookup": _lookup({"return": {"found": False, "message": "Order {order_id} not found"}}),
        "returns": {
            "shape": "object",
            "fields": [
                {"key": "score_nan", "column": "score", "on_null": "nan"},
                {"key": "score_null", "column": "score", "on_null": "null"},
                {"key": "score_zero", "column": "score", "cast": "float", "on_null": "zero"},
                {"key": "score_true", "column": "score", "on_null": "true"},
                {"key": "score_text", "column": "score", "cast": "str", "on_null": "nan_string"},
                {"key": "score_bool", "column": "score", "cast": "bool"},
                {"key": "owners", "column": "owners", "cast": "pyliteral_if_str"},
                {"key": "metrics_raw", "column": "metrics", "cast": "raw"},
            ],
        },
    },
    "getScoreStrict": {
        "kind": "lookup",
        "params": P,
        "lookup": _lookup(NOT_FOUND),
        "returns": {
            "shape": "object",
            "fields": [
                {"key": "score", "column": "score", "cast": "int", "on_null": "error"},
                {"key": "note", "column": "note", "on_null": "error"},
            ],
        },
    },
    "getMetrics": {
        "kind": "lookup",
        "params": P,
        "lookup": _lookup(NOT_FOUND),
        "returns": {"shape": "scalar", "field": {"column": "metrics", "cast": "json_if_str"}},
    },
    "getStatus": {
        "kind": "lookup",
        "params": P,
        "lookup": _lookup(NOT_FOUND),
        "returns": {"shape": "scalar", "field": {"key": "status", "column": "status"}},
    },
    "byRegion": {
        "kind": "lookup",
        "params": {"required": ["region"], "optional": {}, "reject_unknown": True},
        "lookup": {
            "table": "main",
            "match": [{"column": "region", "arg": "region"}],
            "on_none": {"error": "No order in {region}"},
            "on_multiple": "first",
        },
        "returns": {"shape": "object", "fields": [{"key": "order", "column": "order_id"}]},
    },
    "byRegionStrict": {
        "kind": "lookup",
        "params": {"required": ["region"], "optional": {}, "reject_unknown": True},
        "lookup": {
            "table": "main",
            "match": [{"column": "region", "arg": "region"}],
            "on_none": {"error": "No order in {region}"},
            "on_multiple": {"error": "Several orders in {region}"},
        },
        "returns": {"shape": "object", "fields": [{"key": "order", "column": "order_id"}]},
    },
    "checkQty": {
        "kind": "lookup",
        "params": {"required": ["order_id", "qty"], "optional": {}, "reject_unknown": True},
        "lookup": {
            "table": "main",
            "match": [
                {"column": "order_id", "arg": "order_id"},
                {"column": "qty", "arg": "qty", "arg_cast": "int"},
            ],
            "on_none": {"error": "No match"},
            "on_multiple": "first",
        },
        "returns": {"shape": "object", "fields": [{"key": "ok", "const": True}]},
    },
    "checkFlags": {
        "kind": "lookup",
        "params": {"required": ["qty", "express"], "optional": {}, "reject_unknown": True},
        "lookup": {
            "table": "main",
            "match": [
                {"column": "qty", "arg": "qty"},
                {"column": "express", "arg": "express"},
            ],
            "on_none": {"error": "No match"},
            "on_multiple": "first",
        },
        "returns": {"shape": "object", "fields": [{"key": "order", "column": "order_id"}]},
    },
    "findOwner": {
        "kind": "lookup",
        "params": {"required": ["order_id", "owners"], "optional": {}, "reject_unknown": True},
        "lookup": _lookup(NOT_FOUND),
        "returns": {
            "shape": "object",
            "fields": [
                {
                    "key": "owner",
                    "wrap_list": True,
                    "list_find": {
                        "column": "owners",
                        "parse": "quotes_to_json",
                        "match_field": "name",
                        "value": {
                            "arg_path": ["owners", 0, "name"],
                            "arg_parse": "str_then_quotes_to_json",
                        },
                    },
                    "on_missing": {"error": "Owner '{value}' not found for {order_id}"},
                }
            ],
        },
    },
    "findOwnerPlain": {
        "kind": "lookup",
        "params": {"required": ["order_id", "owner"], "optional": {}, "reject_unknown": True},
        "lookup": _lookup(NOT_FOUND),
        "returns": {
            "shape": "object",
            "fields": [
                {
                    "key": "owner",
                    "list_find": {
                        "column": "owners",
                        "match_field": "name",
                        "value": {"arg_path": ["owner", "name"]},
                    },
                }
            ],
        },
    },
    "itemsCheck": {
        "kind": "lookup",
        "params": {"required": ["order_id", "items"], "optional": {}, "reject_unknown": True},
        "lookup": _lookup(NOT_FOUND),
        "post_checks": [
            {
                "rule": "arg_equals_column",
                "arg": "items",
                "arg_parse": "pyliteral_twice_if_str",
                "column": "items",
                "column_parse": "pyliteral_twice_if_str",
                "error": "Incorrect items: {items}",
            }
        ],
        "returns": {"shape": "object", "fields": [{"key": "checked", "const": True}]},
    },
    "checkCode": {
        "kind": "constant",
        "params": {"required": ["code"], "optional": {}, "reject_unknown": True},
        "returns": {
            "shape": "object",
            "fields": [
                {"key": "valid", "regex_match": {"arg": "code", "pattern": "^[A-Z]{2}\\d$"}},
                {"key": "reason", "if_field": "valid", "then": "good", "else": "bad"},
            ],
        },
    },
    "setFlag": {
        "kind": "stub",
        "params": {"required": ["flag"], "optional": {"level": 1}, "reject_unknown": False},
        "validate": [{"rule": "not_none", "args": ["flag"], "error": "flag is required"}],
        "returns": {"shape": "null"},
    },
    "stubEcho": {
        "kind": "stub",
        "params": {"required": [], "optional": {"level": 1}, "reject_unknown": True},
        "returns": {
            "shape": "object",
            "fields": [
                {"key": "level", "arg": "level"},
                {"key": "list", "const": [1, 2]},
            ],
        },
    },
    "legacyTool": {"kind": "invalid", "reason": "legacyTool was removed upstream"},
}

UNLISTED: dict[str, Any] = {
    "secretStatus": {
        "kind": "lookup",
        "params": P,
        "lookup": _lookup(NOT_FOUND),
        "returns": {"shape": "scalar", "field": {"column": "status"}},
    },
}

PLAN: list[dict[str, Any]] = [
    {"tool": "getOrder", "args": {"order_id": {"input": "order_id"}}, "expect": "ok"},
    {"tool": "getDetails", "args": {"order_id": {"out": "getOrder", "key": "id"}}},
    {"tool": "getStatus", "args": {"order_id": {"input": "order_id"}}},
    {
        "tool": "checkQty",
        "args": {
            "order_id": {"input": "order_id"},
            "qty": {"input_parsed": "qty", "parse": "pyliteral"},
        },
    },
    {
        "tool": "getScoreStrict",
        "args": {"order_id": {"input": "order_id"}},
        "expect": {"error_when": {"not": {"all": [{"row_notna": "score"}, {"row_notna": "note"}]}}},
    },
    {
        "tool": "itemsCheck",
        "args": {"order_id": {"input": "order_id"}, "items": {"hidden": "items"}},
    },
    {
        "tool": "findOwner",
        "args": {"order_id": {"input": "order_id"}, "owners": {"const": [{"name": "Ann"}]}},
        "expect": {"error_when": {"row_ne": ["order_id", "O-1"]}},
    },
    {"tool": "setFlag", "args": {"flag": {"hidden": "gift"}}, "when": {"row_notna": "gift"}},
    {
        "tool": "byRegion",
        "args": {"region": {"input": "region"}},
        "when": {"row_truthy": "express"},
        "expect": {"error_when": {"row_isna": "region"}},
    },
    {
        "tool": "getMetrics",
        "args": {"order_id": {"input": "order_id"}},
        "expect": {"error_when": {"row_ne": ["split", "train"]}},
    },
    {"tool": "secretStatus", "args": {"order_id": {"input": "order_id"}}, "unlisted": True},
    {"tool": "legacyTool", "args": {}, "expect": "error"},
    {"tool": "checkCode", "args": {"code": {"out": "getStatus", "key": None}}},
    {"tool": "stubEcho", "args": {"level": {"const": 3}}},
]

BEHAVIOR: dict[str, Any] = {
    "format": "sop-tool-behavior/1",
    "domain": "synthetic_orders",
    "supported": True,
    "source": {"benchmark": "synthetic", "commit": "0" * 40, "license": "test only"},
    "task": {
        "csv": "orders.csv",
        "official_loader_mode": "split",
        # Deliberately not in CSV order: the presentation follows the CSV.
        "input_columns": ["region", "order_id", "qty", "price", "express", "note"],
        "output_columns": ["status", "ok"],
        "split_column": "split",
        "notes": "synthetic",
    },
    "tables": {
        "main": {
            "csv": "orders.csv",
            "na_values": ["", "NA", "nan"],
            "column_types": {"ok": "bool_or_na", "gift": "bool_or_na", "score": "float"},
        }
    },
    "tool_result_rendering": {"ok": "json.dumps", "error": "'Error: ' + message"},
    "tools": TOOLS,
    "unlisted_tools": UNLISTED,
    "oracle_plan": PLAN,
}


def toolspecs(names: list[str], *, openai: bool = False) -> list[dict[str, Any]]:
    """Tool specs for ``names``; a string schema with a pattern shows schemas are not enforced."""
    specs = []
    for name in names:
        params = {
            "type": "object",
            "properties": {"order_id": {"type": "string", "pattern": "^X$"}},
        }
        if openai:
            specs.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": f"The {name} tool.",
                        "parameters": params,
                    },
                }
            )
        else:
            specs.append(
                {
                    "toolSpec": {
                        "name": name,
                        "description": f"The {name} tool.",
                        "inputSchema": {"json": params},
                    }
                }
            )
    return specs


def build_suite(
    folder: Path,
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
    openai_specs: bool = False,
) -> Path:
    """Writes the synthetic suite into ``folder`` and returns it."""
    behavior = copy.deepcopy(BEHAVIOR)
    if edit is not None:
        edit(behavior)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orders.csv").write_text(CSV, encoding="utf-8")
    (folder / "sop.txt").write_text(SOP, encoding="utf-8")
    names = list(BEHAVIOR["tools"])
    (folder / "toolspecs.json").write_text(json.dumps(toolspecs(names, openai=openai_specs)))
    meta = {
        "name": "synthetic_orders",
        "input_columns": BEHAVIOR["task"]["input_columns"],
        "output_columns": BEHAVIOR["task"]["output_columns"],
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / "tool_behavior.json").write_text(json.dumps(behavior, indent=1))
    return folder
