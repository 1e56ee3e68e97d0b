"""Typed CSV tables for SOP suites, read and printed the way ``pandas.read_csv`` would.

SOP-Bench's tools are pandas look-ups over one CSV, and the agent sees cells as pandas prints them.
This module reproduces the parts of that behaviour the replay depends on, without pandas:

- reading: ``na_values`` strings become NaN, every column gets one of the types ``int``, ``float``,
  ``bool``, ``bool_or_na`` (pandas' object column of ``True``/``False``/NaN) or ``str``, either as
  declared or inferred the way pandas infers it; values are kept as Python ``str``/``int``/
  ``float``/``bool``, NaN as ``float("nan")``;
- printing: :func:`present` is pandas' ``str()`` of a cell (``70.1``, ``70``, ``True``, ``nan``);
- comparing: :func:`pandas_eq` is ``series == value`` for one cell, and :meth:`Table.find` uses a
  per-column index with the same semantics.

Non-goals: the rest of pandas (dates, converters, other dialects, quoting options), and writing
CSV. A declared type the data contradicts is an error, never a silent coercion.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# pandas' default ``na_values`` (``keep_default_na=True``), used when a table declares none.
PANDAS_NA_VALUES: tuple[str, ...] = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)
COLUMN_TYPES: tuple[str, ...] = ("int", "float", "bool", "bool_or_na", "str")
NAN = float("nan")

# The spellings pandas' C parser reads as booleans (its default true/false values).
_TRUE = frozenset({"True", "TRUE", "true"})
_FALSE = frozenset({"False", "FALSE", "false"})
# pandas tolerates blanks around numbers, so these do too; Python-only forms ("1_000") are not
# numbers to pandas and must stay strings here.
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT_RE = re.compile(
    r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|infinity)\s*",
    re.IGNORECASE,
)


class TableError(ValueError):
    """A CSV file that cannot be read as declared (the message names the file, column and row)."""


def is_na(value: Any) -> bool:
    """Whether a value is missing: ``None`` or a float NaN (pandas' ``isna`` for scalars).

    >>> is_na(float("nan")), is_na(None), is_na("nan"), is_na(0)
    (True, True, False, False)
    """
    return value is None or (isinstance(value, float) and math.isnan(value))


def present(value: Any) -> str:
    """Prints a cell as pandas' ``str()`` does.

    Python's ``repr`` of a float is the same shortest round-trip form numpy's ``str`` of a
    float64 uses (``70.1``, ``1e-05``, ``1e+16``, ``nan``), and the other types print alike.

    >>> [present(v) for v in (70.1, 70, True, float("nan"), "a b")]
    ['70.1', '70', 'True', 'nan', 'a b']
    """
    if isinstance(value, float):
        return repr(value)
    return str(value)


def pandas_eq(cell: Any, value: Any) -> bool:
    """Whether ``pandas.Series([cell]) == value`` is true for a typed cell.

    Missing values never match; strings only equal strings; numbers and booleans compare by
    value (``5 == 5.0``, ``True == 1``, as numpy does). A list or object argument never matches:
    pandas would compare it element-wise against the whole column or refuse it, neither of which
    is a lookup an agent could mean.

    >>> pandas_eq(5, 5.0), pandas_eq(5, "5"), pandas_eq(True, "true"), pandas_eq(NAN, NAN)
    (True, False, False, False)
    """
    if is_na(cell) or is_na(value) or isinstance(value, list | tuple | dict):
        return False
    if isinstance(cell, str) != isinstance(value, str):
        return False
    return bool(cell == value)


def _convert(raw: str, kind: str) -> Any:
    """Converts one non-missing cell to ``kind``; raises ``ValueError`` if it does not fit."""
    if kind == "str":
        return raw
    if kind == "int" and _INT_RE.fullmatch(raw):
        return int(raw)
    if kind == "float" and (_FLOAT_RE.fullmatch(raw) or _INT_RE.fullmatch(raw)):
        return float(raw)
    if kind in ("bool", "bool_or_na") and (raw in _TRUE or raw in _FALSE):
        return raw in _TRUE
    raise ValueError(f"{raw!r} is not a valid {kind}")


def infer_type(cells: Iterable[str | None]) -> str:
    """The type pandas would give a column of raw cells (``None`` = missing).

    >>> infer_type(["1", "2"]), infer_type(["1", None]), infer_type(["True", None])
    ('int', 'float', 'bool_or_na')
    """
    all_cells = list(cells)
    values = [c for c in all_cells if c is not None]
    missing = len(values) < len(all_cells)
    if not values:
        return "float"  # an all-empty column is float64 NaN in pandas
    if all(_INT_RE.fullmatch(v) for v in values):
        return "float" if missing else "int"
    if all(_FLOAT_RE.fullmatch(v) or _INT_RE.fullmatch(v) for v in values):
        return "float"
    if all(v in _TRUE or v in _FALSE for v in values):
        return "bool_or_na" if missing else "bool"
    return "str"


class Table:
    """A typed, read-only CSV table with pandas' equality look-ups.

    Args:
        name: Name used in error messages (the table's key in the behaviour spec).
        columns: Column names in file order.
        types: The type of every column (see :data:`COLUMN_TYPES`).
        rows: Typed rows, one value per column.
    """

    def __init__(
        self,
        name: str,
        columns: Sequence[str],
        types: Mapping[str, str],
        rows: Sequence[Sequence[Any]],
    ):
        self.name = name
        self.columns: tuple[str, ...] = tuple(columns)
        self.types: dict[str, str] = {c: types[c] for c in self.columns}
        self.rows: tuple[tuple[Any, ...], ...] = tuple(tuple(r) for r in rows)
        self._position = {c: i for i, c in enumerate(self.columns)}
        # column -> value -> row numbers; built on first use. Python's dict lookup has the same
        # equality as pandas_eq for the scalars a typed column holds (1 == 1.0 == True, "1" != 1).
        self._index: dict[str, dict[Any, list[int]]] = {}

    @classmethod
    def read(
        cls,
        path: Path,
        *,
        name: str,
        na_values: Iterable[str] = PANDAS_NA_VALUES,
        column_types: Mapping[str, str] | None = None,
    ) -> Table:
        """Reads a CSV file as ``pandas.read_csv(path, na_values=..., keep_default_na=False)``.

        Columns missing from ``column_types`` get the type pandas would infer.

        Raises:
            TableError: On duplicate or unknown columns, ragged rows, or a cell that does not fit
                its declared type.
        """
        declared = dict(column_types or {})
        na = frozenset(na_values)
        # utf-8-sig drops a byte-order mark, as pandas does; blank lines are skipped like pandas'
        # skip_blank_lines.
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                records = [r for r in csv.reader(f) if r]
        except UnicodeDecodeError as e:
            raise TableError(f"{path}: not a UTF-8 CSV file ({e.reason} at byte {e.start})") from e
        except csv.Error as e:
            raise TableError(f"{path}: not a readable CSV file: {e}") from e
        if not records:
            raise TableError(f"{path}: the file is empty (no header row)")
        header = [c if c else f"Unnamed: {i}" for i, c in enumerate(records[0])]
        duplicates = sorted({c for c in header if header.count(c) > 1})
        if duplicates:
            raise TableError(f"{path}: duplicate column names {duplicates}")
        unknown = sorted(set(declared) - set(header))
        if unknown:
            raise TableError(f"{path}: column_types names columns not in the file: {unknown}")
        raw_rows: list[list[str | None]] = []
        for line, record in enumerate(records[1:], start=2):
            if len(record) > len(header):
                raise TableError(
                    f"{path}: record {line} has {len(record)} fields, the header {len(header)}"
                )
            padded = [*record, *[None] * (len(header) - len(record))]
            raw_rows.append([None if c is None or c in na else c for c in padded])
        types = {
            c: declared.get(c) or infer_type(r[j] for r in raw_rows) for j, c in enumerate(header)
        }
        typed: list[list[Any]] = [[] for _ in raw_rows]
        for j, column in enumerate(header):
            kind = types[column]
            for i, raw in enumerate(raw_rows):
                cell = raw[j]
                if cell is None:
                    if kind in ("int", "bool"):
                        raise TableError(
                            f"{path}: column {column!r} is declared {kind} but row {i} is empty "
                            f"(declare it {'float' if kind == 'int' else 'bool_or_na'})"
                        )
                    typed[i].append(NAN)
                    continue
                try:
                    typed[i].append(_convert(cell, kind))
                except ValueError as e:
                    raise TableError(f"{path}: column {column!r}, row {i}: {e}") from None
        return cls(name, header, types, typed)

    def __len__(self) -> int:
        return len(self.rows)

    def has_column(self, column: str) -> bool:
        """Whether the table has this column."""
        return column in self._position

    def value(self, row: int, column: str) -> Any:
        """The typed value of one cell."""
        return self.rows[row][self._position[column]]

    def row(self, row: int) -> dict[str, Any]:
        """One row as a ``{column: typed value}`` dict, in column order."""
        return dict(zip(self.columns, self.rows[row], strict=True))

    def find(self, column: str, value: Any) -> list[int]:
        """Row numbers whose ``column`` equals ``value`` under :func:`pandas_eq`, in order."""
        if is_na(value) or isinstance(value, list | tuple | dict):
            return []
        index = self._index.get(column)
        if index is None:
            index = {}
            position = self._position[column]
            for i, r in enumerate(self.rows):
                if not is_na(r[position]):
                    index.setdefault(r[position], []).append(i)
            self._index[column] = index
        return list(index.get(value, ()))
