"""The PythonTests task bank: 24 functions, each with visible and hidden test inputs.

A problem names a reference function in :mod:`mtrl_envs.python_tests.solutions` (whose signature
and docstring are the spec) and lists argument tuples. Expected outputs are computed by calling
the reference in this process, JSON-normalised (tuples become lists), so the bank cannot drift
from its solutions. Visible tests are shown in the prompt and run by the ``run_tests`` tool;
hidden tests, mostly edge cases (empty inputs, negatives, wrap-arounds, large arguments), are run
only when grading, together with the visible ones.

Splits are fixed by position: every sixth problem from the fifth on goes to validation, every
sixth from the sixth on to test, the rest (16) to train. They share no function.

Non-goals: a large benchmark; this bank is meant to be small enough to check every task in CI.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from mtrl_envs.python_tests import solutions

Args = tuple[Any, ...]

# (function name, visible argument tuples, hidden argument tuples)
_BANK: tuple[tuple[str, tuple[Args, ...], tuple[Args, ...]], ...] = (
    ("fizzbuzz", ((5,), (15,)), ((0,), (1,), (3,), (-2,), (30,))),
    (
        "is_palindrome",
        (("Racecar",), ("hello",)),
        (("",), ("A man, a plan, a canal: Panama",), ("ab1ba2",), ("12 21",), ("Ab",)),
    ),
    (
        "run_length_encode",
        (("aaab",), ("abc",)),
        (("",), ("z" * 12,), ("aabbaa",), ("  x",), ("AaA",)),
    ),
    (
        "second_largest",
        (([3, 1, 4, 1, 5],), ([2, 9, 4],)),
        (([],), ([1],), ([7, 7],), ([5, 5, 4],), ([-1, -2, -3],), ([10, 9, 10, 8],)),
    ),
    (
        "flatten",
        (([1, [2, 3]],), ([[1], [2, [3, [4]]]],)),
        (([],), ([[], [[]]],), ([1, [2, [3, [4, [5]]]]],), (["a", ["b"]],), ([[1, 2], 3, []],)),
    ),
    (
        "roman_to_int",
        (("III",), ("IX",)),
        (("LVIII",), ("MCMXCIV",), ("MMXXVI",), ("XL",), ("CDXLIV",), ("I",)),
    ),
    ("int_to_roman", ((3,), (58,)), ((4,), (9,), (1994,), (3999,), (40,), (444,))),
    (
        "merge_intervals",
        (([[1, 3], [2, 6], [8, 10]],), ([[1, 4], [4, 5]],)),
        (([],), ([[5, 6], [1, 2]],), ([[1, 10], [2, 3]],), ([[3, 5], [1, 2], [2, 3]],)),
    ),
    (
        "word_frequencies",
        (("the cat and the hat",), ("Hi hi",)),
        (("",), ("It's 2 o'clock!",), ("a-b a_b",), ("...",), ("Zebra zebra ZEBRA",)),
    ),
    (
        "rotate_right",
        (([1, 2, 3, 4], 1), ([1, 2, 3], 3)),
        (([], 5), ([1, 2, 3], 4), ([1, 2, 3], -1), (["a"], 100), ([1, 2, 3, 4, 5], 7)),
    ),
    (
        "gcd_of_list",
        (([12, 18],), ([7, 13],)),
        (([],), ([0, 0],), ([0, 5],), ([-4, 6],), ([100],), ([24, 36, 60],)),
    ),
    (
        "first_index",
        (([1, 3, 5, 7], 5), ([1, 2, 3], 4)),
        (([], 1), ([2, 2, 2, 2], 2), ([1, 2, 2, 3], 2), ([1], 0), ([-5, -1, 0, 0, 9], 0)),
    ),
    (
        "caesar",
        (("abc", 1), ("Hello, World!", 3)),
        (("xyz", 3), ("ABC", -1), ("", 5), ("Zz", 52), ("a b", 27), ("é5!", 1)),
    ),
    (
        "is_balanced",
        (("([]{})",), ("(]",)),
        (("",), ("((",), ("))((",), ("a(b[c]d)e",), ("{[}]",), ("}",), ("([{}])[]",)),
    ),
    ("primes_up_to", ((10,), (2,)), ((1,), (0,), (-5,), (30,), (97,))),
    (
        "camel_to_snake",
        (("camelCase",), ("PascalCase",)),
        (("",), ("already_snake",), ("getHTTPResponse",), ("version2Update",), ("A",), ("aB",)),
    ),
    (
        "max_subarray_sum",
        (([-2, 1, -3, 4, -1, 2, 1, -5, 4],), ([1, 2, 3],)),
        (([-3],), ([-5, -2, -8],), ([0],), ([5, -9, 6],), ([2, -1, 2],)),
    ),
    (
        "are_anagrams",
        (("listen", "silent"), ("abc", "abd")),
        (("", ""), ("Dormitory", "dirty room"), ("aab", "abb"), ("a", "A"), ("ab", "abc")),
    ),
    (
        "transpose",
        (([[1, 2], [3, 4]],), ([[1, 2, 3]],)),
        (([],), ([[1], [2], [3]],), ([[1, 2, 3], [4, 5, 6]],), ([[7]],)),
    ),
    (
        "summarize_ranges",
        (([0, 1, 2, 4, 5, 7],), ([3],)),
        (([],), ([1, 3, 5],), ([-3, -2, -1, 1],), ([1, 2],), ([5, 6, 7, 8, 9],)),
    ),
    ("fibonacci", ((0,), (10,)), ((1,), (2,), (30,), (50,), (90,))),
    (
        "parse_duration",
        (("1h30m",), ("45s",)),
        (("2h5s",), ("10m",), ("1h1m1s",), ("0s",), ("100h",)),
    ),
    (
        "median",
        (([3, 1, 2],), ([4, 1, 3, 2],)),
        (([5],), ([1, 2],), ([-1, -5, 10, 0],), ([2, 2, 2, 9],), ([7, 1, 3, 9, 5],)),
    ),
    (
        "spiral_order",
        (([[1, 2], [3, 4]],), ([[1, 2, 3], [4, 5, 6], [7, 8, 9]],)),
        (([],), ([[1]],), ([[1, 2, 3, 4]],), ([[1], [2], [3]],), ([[1, 2], [3, 4], [5, 6]],)),
    ),
)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Case:
    """One test: the arguments and the reference's JSON-normalised return value."""

    args: list[Any]
    expected: Any


@dataclass(frozen=True)
class Problem:
    """A function to implement, its spec, reference source and tests."""

    name: str
    split: str
    signature: str
    spec: str
    reference: str
    visible: tuple[Case, ...]
    hidden: tuple[Case, ...]


def _split_of(position: int) -> str:
    return {4: "validation", 5: "test"}.get(position % 6, "train")


def _case(fn: Any, args: Args) -> Case:
    # Arguments go through JSON too: they reach the sandbox as JSON, so the reference must be
    # judged on exactly the values the agent's code will receive.
    plain = json.loads(json.dumps(list(args)))
    return Case(plain, json.loads(json.dumps(fn(*copy.deepcopy(plain)))))


@cache
def problems() -> tuple[Problem, ...]:
    """Every problem of the bank, in bank order (built once per process)."""
    out = []
    for position, (name, visible, hidden) in enumerate(_BANK):
        fn = getattr(solutions, name)
        source = inspect.getsource(fn)
        out.append(
            Problem(
                name=name,
                split=_split_of(position),
                signature=source.splitlines()[0],
                spec=inspect.getdoc(fn) or "",
                reference=source,
                visible=tuple(_case(fn, a) for a in visible),
                hidden=tuple(_case(fn, a) for a in hidden),
            )
        )
    return tuple(out)


def split_problems(split: str) -> tuple[Problem, ...]:
    """The problems of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(p for p in problems() if p.split == split)
