"""A SOP suite folder loaded and checked: procedure, tool specs, tables, tasks and tools.

:meth:`SopSuite.load` reads a folder in the SOP-Bench layout (``sop.txt``, ``toolspecs.json``,
``metadata.json``, the task CSV) plus a ``tool_behavior.json`` (in the folder or given
separately), validates them against each other, and records the sha256 of every file for reports.
The suite then presents tasks exactly as SPEC.md says and builds the tools an environment serves.

Non-goals: the episode loop and scoring (``env``, ``scoring``); fetching data (the caller passes a
folder, and SOP-Bench data is never copied into this repository).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mtrl_envs.sop.behavior import check_columns, normalize_behavior
from mtrl_envs.sop.engine import BehaviorTool
from mtrl_envs.sop.spec import SopSpecError
from mtrl_envs.sop.table import Table, TableError, is_na, present
from mtrl_gym import Task, Tool

BEHAVIOR_FILE = "tool_behavior.json"
# Our own suites name their files in a manifest (``suite.json``): the SOP-Bench names
# ``toolspecs.json`` / ``tool_behavior.json`` are kept for SOP-Bench folders, so a file with those
# names in this repository would always mean leaked benchmark data.
MANIFEST_FILE = "suite.json"
MANIFEST_FORMAT = "mtrl-sop-suite/1"
DEFAULT_FILES = {
    "sop": "sop.txt",
    "toolspecs": "toolspecs.json",
    "metadata": "metadata.json",
    "behavior": BEHAVIOR_FILE,
}


class SopTool(Tool):
    """A tool whose arguments are checked by its behaviour, not by its JSON schema.

    Upstream tools are Python functions: a schema's patterns, enums and types were shown to the
    agent but never enforced, so a call is only rejected for what the function itself rejects
    (see :func:`mtrl_envs.sop.engine.bind` and the ``validate`` rules).
    """

    def validate(self, arguments: Any) -> str | None:
        """Rejects only arguments that are not a JSON object."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SopSpecError(f"{path}: file not found") from None
    except ValueError as e:
        raise SopSpecError(f"{path}: not valid JSON: {e}") from None


def _inside(folder: Path, relative: str, where: str) -> Path:
    """Resolves a file named in the spec, which must stay inside the suite folder."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise SopSpecError(f"{where}: {relative!r} must be a path inside the suite folder")
    return folder / rel


def suite_files(folder: Path) -> dict[str, Path]:
    """The suite's file paths: SOP-Bench names, or those its ``suite.json`` manifest gives."""
    names = dict(DEFAULT_FILES)
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        raw = _read_json(manifest)
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise SopSpecError(f"{manifest}: expected an object with format {MANIFEST_FORMAT!r}")
        unknown = sorted(set(raw) - {"format", *DEFAULT_FILES})
        if unknown:
            raise SopSpecError(
                f"{manifest}: unknown keys {unknown}; known: {sorted(DEFAULT_FILES)}"
            )
        for key in DEFAULT_FILES:
            if key in raw:
                if not isinstance(raw[key], str):
                    raise SopSpecError(f"{manifest}: $.{key} must be a file name")
                names[key] = raw[key]
    return {k: _inside(folder, v, f"{manifest}: $.{k}") for k, v in names.items()}


def _function_spec(item: Any, index: int) -> dict[str, Any]:
    """One toolspecs.json entry (Bedrock ``toolSpec`` or OpenAI function) as an OpenAI function."""
    if not isinstance(item, dict):
        raise SopSpecError(f"toolspecs.json[{index}]: expected an object")
    if "toolSpec" in item or "inputSchema" in item:
        inner = item.get("toolSpec", item)
        params = (inner.get("inputSchema") or {}).get("json")
    else:
        inner = item.get("function", item)
        params = inner.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(inner.get("name"), str) or not isinstance(params, dict):
        raise SopSpecError(
            f"toolspecs.json[{index}]: expected a Bedrock toolSpec (name, inputSchema.json) or an "
            "OpenAI function (name, parameters)"
        )
    return {
        "name": inner["name"],
        "description": inner.get("description", ""),
        "parameters": params,
    }


@dataclass(frozen=True, kw_only=True, eq=False)
class SopSuite:
    """A loaded, validated SOP suite. Build one with :meth:`load`.

    Attributes:
        folder: The data folder.
        name: The suite's name (the behaviour's ``domain``, else ``metadata.json``'s ``name``).
        sop_text: The procedure, verbatim.
        tool_schemas: The advertised tools as OpenAI functions, in ``toolspecs.json`` order.
        metadata: ``metadata.json`` as read.
        behavior: The normalised behaviour spec.
        tables: The behaviour's tables, read and typed.
        task_table: The table tasks come from (``task.csv``).
        checksums: sha256 of ``sop``, ``toolspecs``, ``metadata``, ``csv`` and ``behavior``.
    """

    folder: Path
    name: str
    sop_text: str
    tool_schemas: tuple[dict[str, Any], ...]
    metadata: dict[str, Any]
    behavior: dict[str, Any]
    tables: dict[str, Table]
    task_table: Table
    checksums: dict[str, str]

    @classmethod
    def load(cls, folder: str | Path, behavior_path: str | Path | None = None) -> SopSuite:
        """Loads and validates a suite folder.

        Args:
            folder: Folder with ``sop.txt``, ``toolspecs.json``, ``metadata.json`` and the CSVs.
            behavior_path: The behaviour file, or a folder holding ``tool_behavior.json``;
                default: ``tool_behavior.json`` in ``folder``.

        Raises:
            UnsupportedSuiteError: The behaviour says the suite cannot be replayed.
            SopSpecError: A file is missing or invalid (the message names file and JSON path).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise SopSpecError(f"{folder}: not a folder")
        paths = suite_files(folder)
        bpath = Path(behavior_path) if behavior_path is not None else paths["behavior"]
        if bpath.is_dir():
            bpath = bpath / BEHAVIOR_FILE
        raw_behavior = _read_json(bpath)
        try:
            behavior = normalize_behavior(raw_behavior)
        except SopSpecError as e:
            raise type(e)(f"{bpath}: {e}") from None
        files = {
            "sop.txt": paths["sop"],
            "toolspecs.json": paths["toolspecs"],
            "metadata.json": paths["metadata"],
        }
        for path in files.values():
            if not path.is_file():
                raise SopSpecError(f"{path}: file not found (a suite folder needs it)")
        metadata = _read_json(files["metadata.json"])
        raw_specs = _read_json(files["toolspecs.json"])
        if not isinstance(raw_specs, list):
            raise SopSpecError(f"{files['toolspecs.json']}: expected a JSON list of tool specs")
        schemas = tuple(_function_spec(item, i) for i, item in enumerate(raw_specs))
        task = behavior["task"]
        task_csv = _inside(folder, task["csv"], f"{bpath}: $.task.csv")
        try:
            tables = {
                name: Table.read(
                    _inside(folder, t["csv"], f"{bpath}: $.tables.{name}.csv"),
                    name=name,
                    na_values=t["na_values"],
                    column_types=t["column_types"],
                )
                for name, t in behavior["tables"].items()
            }
            same = [n for n, t in behavior["tables"].items() if t["csv"] == task["csv"]]
            task_table = tables[same[0]] if same else Table.read(task_csv, name="task")
        except (TableError, FileNotFoundError) as e:
            raise SopSpecError(str(e)) from None
        try:
            check_columns(behavior, tables, task_table)
        except SopSpecError as e:
            raise SopSpecError(f"{bpath}: {e}") from None
        _check_consistency(bpath, behavior, schemas, metadata, task_table)
        checksums = {
            "sop": _sha256(files["sop.txt"]),
            "toolspecs": _sha256(files["toolspecs.json"]),
            "metadata": _sha256(files["metadata.json"]),
            "csv": _sha256(task_csv),
            "behavior": _sha256(bpath),
        }
        return cls(
            folder=folder,
            name=behavior["domain"] or str(metadata.get("name") or folder.name),
            sop_text=files["sop.txt"].read_text(encoding="utf-8"),
            tool_schemas=schemas,
            metadata=metadata,
            behavior=behavior,
            tables=tables,
            task_table=task_table,
            checksums=checksums,
        )

    # ---- views -----------------------------------------------------------------------------

    @property
    def input_columns(self) -> list[str]:
        """Input columns, in CSV column order (the order they are presented in)."""
        wanted = set(self.behavior["task"]["input_columns"])
        return [c for c in self.task_table.columns if c in wanted]

    @property
    def output_columns(self) -> list[str]:
        """Output columns, as the behaviour lists them."""
        return list(self.behavior["task"]["output_columns"])

    @property
    def official_loader_mode(self) -> str:
        """How SOP-Bench's own loader reads this suite (``split``, ``legacy_full_row``, ``broken``).

        Recorded for reports only: tasks are always presented as SPEC.md says.
        """
        return str(self.behavior["task"]["official_loader_mode"])

    @property
    def data_commit(self) -> str | None:
        """The upstream data commit the behaviour was written against, if recorded."""
        commit = self.behavior["source"].get("commit")
        return commit if isinstance(commit, str) else None

    @property
    def splits(self) -> list[str]:
        """The values of ``task.split_column`` (empty when the suite declares none)."""
        column = self.behavior["task"]["split_column"]
        if column is None:
            return []
        values = {present(self.task_table.value(i, column)) for i in range(len(self.task_table))}
        return sorted(values)

    def present_input(self, row: int) -> str:
        """The task input as the agent reads it: ``"{column}: {value}"`` lines, pandas ``str()``."""
        return "\n".join(
            f"{c}: {present(self.task_table.value(row, c))}" for c in self.input_columns
        )

    def expected_output(self, row: int) -> dict[str, Any]:
        """The row's output columns, NaN as ``None`` (the ground truth of the task)."""
        values = {c: self.task_table.value(row, c) for c in self.output_columns}
        return {c: None if is_na(v) else v for c, v in values.items()}

    def system_prompt(self) -> str:
        """The procedure, then how to give the final answer with the exact output keys."""
        keys = ", ".join(json.dumps(c, ensure_ascii=False) for c in self.output_columns)
        example = json.dumps(dict.fromkeys(self.output_columns, "..."), ensure_ascii=False)
        return (
            f"{self.sop_text.rstrip()}\n\n"
            "When you have completed the procedure, give your final answer as one JSON object "
            f"inside <final_output></final_output> tags, with exactly these keys: {keys}.\n"
            f"For example: <final_output>{example}</final_output>"
        )

    def task_id(self, row: int) -> str:
        """The row's task id: its ``id_column`` value if declared, else the row number."""
        column = self.behavior["task"]["id_column"]
        return str(row) if column is None else present(self.task_table.value(row, column))

    def tasks(self, split: str | None = None) -> tuple[Task, ...]:
        """One task per CSV row (of one split when ``split`` is given)."""
        column = self.behavior["task"]["split_column"]
        if split is not None and column is None:
            raise ValueError(f"suite {self.name!r} declares no split_column; split must be None")
        if split is not None and split not in self.splits:
            raise ValueError(f"suite {self.name!r} has no split {split!r} (splits: {self.splits})")
        rows: Sequence[int] = range(len(self.task_table))
        if split is not None:
            rows = [i for i in rows if present(self.task_table.value(i, column)) == split]
        system = self.system_prompt()
        return tuple(
            Task(
                id=self.task_id(i),
                prompt=self.present_input(i),
                system=system,
                answer=self.expected_output(i),
                metadata={"suite": self.name, "row": i},
            )
            for i in rows
        )

    def make_tools(self) -> tuple[tuple[Tool, ...], tuple[Tool, ...]]:
        """The advertised tools (``toolspecs.json`` order) and the unlisted ones.

        The tools are stateless (every call is a look-up in read-only tables), so one set can
        serve every episode.
        """
        tools = self.behavior["tools"]
        listed = tuple(
            SopTool.from_openai(s, BehaviorTool(s["name"], tools[s["name"]], self.tables))
            for s in self.tool_schemas
        )
        unlisted = []
        for name, spec in self.behavior["unlisted_tools"].items():
            params = spec["params"]
            schema = {
                "type": "object",
                "properties": {p: {} for p in [*params["required"], *params["optional"]]},
                "required": list(params["required"]),
            }
            fn = BehaviorTool(name, spec, self.tables)
            unlisted.append(SopTool(name=name, description="", parameters=schema, fn=fn))
        return listed, tuple(unlisted)


def _check_consistency(
    where: Path,
    behavior: Mapping[str, Any],
    schemas: Sequence[Mapping[str, Any]],
    metadata: Any,
    task_table: Table,
) -> None:
    """Checks the behaviour against toolspecs.json, metadata.json and the task rows."""
    names = [s["name"] for s in schemas]
    if len(set(names)) != len(names):
        raise SopSpecError(f"toolspecs.json: a tool is listed twice: {names}")
    advertised, described = set(names), set(behavior["tools"])
    if advertised - described:
        raise SopSpecError(
            f"{where}: toolspecs.json advertises tools with no behaviour: "
            f"{sorted(advertised - described)} (describe them, kind 'invalid' if they always fail)"
        )
    if described - advertised:
        raise SopSpecError(
            f"{where}: $.tools describes tools toolspecs.json does not advertise: "
            f"{sorted(described - advertised)} (move them to unlisted_tools)"
        )
    if not isinstance(metadata, dict):
        raise SopSpecError("metadata.json: expected a JSON object")
    task = behavior["task"]
    for key in ("input_columns", "output_columns"):
        if key in metadata and set(metadata[key]) != set(task[key]):
            raise SopSpecError(
                f"{where}: $.task.{key} {task[key]} disagrees with metadata.json {metadata[key]}"
            )
    id_column = task["id_column"]
    if id_column is not None:
        ids = [task_table.value(i, id_column) for i in range(len(task_table))]
        shown = [present(v) for v in ids]
        if any(is_na(v) for v in ids) or len(set(shown)) != len(shown):
            raise SopSpecError(f"{where}: $.task.id_column {id_column!r} must be unique and filled")
