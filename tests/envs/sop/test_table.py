"""Typed CSV tables: pandas' typing, printing and equality, checked by hand and against pandas."""

import math

import pytest

from mtrl_envs.sop.table import PANDAS_NA_VALUES, Table, TableError, infer_type, pandas_eq, present
from tests.envs.sop.synthetic import CSV


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_table__types_values_and_nan_as_pandas_reads_them(tmp_path):
    table = Table.read(
        write(tmp_path, CSV),
        name="main",
        na_values=["", "NA", "nan"],
        column_types={"ok": "bool_or_na", "gift": "bool_or_na"},
    )
    assert table.types == {
        "order_id": "str",
        "qty": "int",
        "price": "float",
        "express": "bool",
        "gift": "bool_or_na",
        "note": "str",
        "items": "str",
        "owners": "str",
        "metrics": "str",
        "score": "float",
        "region": "str",
        "split": "str",
        "status": "str",
        "ok": "bool_or_na",
    }
    row0, row1, row2 = table.row(0), table.row(1), table.row(2)
    assert row0["qty"] == 3 and type(row0["qty"]) is int
    assert row0["express"] is True and row1["express"] is False and row1["gift"] != row1["gift"]
    assert row0["metrics"] == '{"a": 1}' and row2["items"] == "\"['q']\""
    assert math.isnan(row1["score"]) and math.isnan(row2["note"])  # "NA" is in na_values
    assert math.isnan(row2["ok"]) and row2["price"] == 1e-05


def test_table__default_na_values_are_pandas_defaults_and_custom_ones_replace_them(tmp_path):
    path = write(tmp_path, "a,b\nNULL,x\nn/a,NA\n")
    assert all(math.isnan(v) for v in (Table.read(path, name="t").value(i, "a") for i in (0, 1)))
    custom = Table.read(path, name="t", na_values=["NA"])
    assert custom.value(0, "a") == "NULL" and math.isnan(custom.value(1, "b"))
    assert "" in PANDAS_NA_VALUES and "None" in PANDAS_NA_VALUES


def test_infer_type__follows_pandas_rules():
    assert infer_type(["1", "-2", " 3"]) == "int"
    assert infer_type(["1", None]) == "float"  # an int column with a gap is float64
    assert infer_type(["1.5", "2", "1e3", "inf"]) == "float"
    assert infer_type(["True", "false", "TRUE"]) == "bool"
    assert infer_type(["True", None]) == "bool_or_na"
    assert infer_type(["True", "1"]) == "str"
    assert infer_type(["1_000"]) == "str"  # Python int() accepts it, pandas does not
    assert infer_type([None, None]) == "float"


def test_present__prints_cells_like_pandas_str():
    values = (70.1, 70.0, 70, True, False, float("nan"), 1e-05, 1e16, 0.1 + 0.2, "a, b", "")
    assert [present(v) for v in values] == [
        "70.1",
        "70.0",
        "70",
        "True",
        "False",
        "nan",
        "1e-05",
        "1e+16",
        "0.30000000000000004",
        "a, b",
        "",
    ]


def test_pandas_eq__one_cell_semantics():
    nan = float("nan")
    assert pandas_eq(5, 5.0) and pandas_eq(5, True) is False and pandas_eq(1, True)
    assert not pandas_eq(5, "5") and not pandas_eq("5", 5)
    assert not pandas_eq(True, "true") and pandas_eq(True, True) and pandas_eq(True, 1)
    assert not pandas_eq(nan, nan) and not pandas_eq(nan, None) and not pandas_eq("x", None)
    assert not pandas_eq("x", ["x"]) and not pandas_eq("x", {"x": 1})


def test_table_find__uses_pandas_eq_and_keeps_row_order(tmp_path):
    table = Table.read(write(tmp_path, "k,n,b\nx,1,True\ny,2,False\nx,1,True\n,3,True\n"), name="t")
    assert table.find("k", "x") == [0, 2]
    assert table.find("n", 1.0) == [0, 2] and table.find("n", "1") == []
    assert table.find("b", True) == [0, 2, 3] and table.find("b", "True") == []
    assert table.find("k", float("nan")) == [] and table.find("k", ["x"]) == []


@pytest.mark.parametrize(
    ("text", "types", "message"),
    [
        ("a,a\n1,2\n", None, "duplicate column names ['a']"),
        ("a\n1\n", {"b": "int"}, "column_types names columns not in the file: ['b']"),
        ("a,b\n1,2,3\n", None, "record 2 has 3 fields, the header 2"),
        ("a\n1\n\n", {"a": "bool"}, "column 'a', row 0: '1' is not a valid bool"),
        ("a\n1\nx\n", {"a": "int"}, "column 'a', row 1: 'x' is not a valid int"),
        ('a\n1\n""\n', {"a": "int"}, "column 'a' is declared int but row 1 is empty"),
        ("", None, "the file is empty"),
    ],
)
def test_table_read__rejects_data_that_contradicts_the_declaration(tmp_path, text, types, message):
    with pytest.raises(TableError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Table.read(write(tmp_path, text), name="t", column_types=types)


def test_table_read__short_rows_are_padded_and_blank_lines_skipped_and_unnamed_headers(tmp_path):
    table = Table.read(write(tmp_path, "\ufeffa,,c\n1\n\n2,x,y\n"), name="t")
    assert table.columns == ("a", "Unnamed: 1", "c") and len(table) == 2
    assert math.isnan(table.value(0, "c")) and table.value(1, "c") == "y"


def test_table__matches_pandas_on_the_synthetic_csv(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is the reference, not a dependency")
    path = write(tmp_path, CSV)
    ours = Table.read(path, name="main", na_values=["", "NA", "nan"])
    theirs = pd.read_csv(path, na_values=["", "NA", "nan"], keep_default_na=False)
    assert list(theirs.columns) == list(ours.columns)
    for i in range(len(theirs)):
        for c in theirs.columns:
            assert present(ours.value(i, c)) == str(theirs[c].iloc[i]), (i, c)
            assert pandas_eq(ours.value(i, c), ours.value(i, c)) == bool(
                (theirs[c] == theirs[c].iloc[i]).iloc[i]
            ), (i, c)
