"""Arithmetic word problems for the Calculator environment, generated from seeds.

Each template turns random quantities into a short story and the arithmetic expression that
solves it; the expected answer is that expression evaluated exactly (with the same evaluator the
agent's ``calculator`` tool uses). Draws are repeated until the answer is a "nice" exact value:
positive, and a terminating decimal with few places, so that the answer has one unambiguous
JSON number and no rounding rule is needed. Draws are also repeated until the problem's text
falls in one of the split's hash buckets (:func:`split_bucket`), which keeps every problem text
in a single split.

Non-goals: linguistic variety (one phrasing per template) and problems needing rounding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection
from fractions import Fraction

import numpy as np

from mtrl_envs.calculator.arithmetic import evaluate

NAMES = ("Ana", "Ben", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana")
ITEMS = ("notebook", "pen", "folder", "marker", "ruler", "stapler")
MAX_PLACES = 4

Template = Callable[[np.random.Generator], tuple[str, str]]


def _pick(rng: np.random.Generator, values: tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def _money(rng: np.random.Generator, low: int, high: int) -> str:
    """A price between ``low`` and ``high`` dollars with cents, e.g. ``3.45``."""
    cents = int(rng.integers(low * 100, high * 100))
    return f"{cents // 100}.{cents % 100:02d}"


def change(rng: np.random.Generator) -> tuple[str, str]:
    """Change from a note after buying two kinds of items."""
    name = _pick(rng, NAMES)
    first, second = (ITEMS[int(i)] for i in rng.choice(len(ITEMS), size=2, replace=False))
    q1, q2 = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    p1, p2 = _money(rng, 1, 9), _money(rng, 1, 9)
    total = q1 * Fraction(p1) + q2 * Fraction(p2)
    note = next(n for n in (20, 50, 100, 200) if n > total)
    text = (
        f"{name} buys {q1} {first}s at ${p1} each and {q2} {second}s at ${p2} each, and pays "
        f"with a ${note} note. How much change, in dollars, does {name} get?"
    )
    return text, f"{note} - ({q1} * {p1} + {q2} * {p2})"


def train_trip(rng: np.random.Generator) -> tuple[str, str]:
    """Distance over two legs at different speeds, one given in minutes."""
    hours, v1, v2 = int(rng.integers(1, 5)), int(rng.integers(60, 160)), int(rng.integers(40, 120))
    minutes = 6 * int(rng.integers(2, 10))  # a multiple of 6 minutes is a tenth of an hour
    text = (
        f"A train travels for {hours} hours at {v1} km/h, then for {minutes} minutes at {v2} "
        "km/h. How many kilometres does it travel in total?"
    )
    return text, f"{hours} * {v1} + {minutes} / 60 * {v2}"


def discount_and_tax(rng: np.random.Generator) -> tuple[str, str]:
    """A price after a percentage discount and then a percentage tax."""
    price, off, tax = int(rng.integers(20, 400)), int(rng.integers(5, 50)), int(rng.integers(5, 25))
    text = (
        f"A jacket costs ${price}. It is discounted by {off}%, and then a sales tax of {tax}% is "
        "added to the discounted price. What is the final price in dollars (exact, not rounded)?"
    )
    return text, f"{price} * (100 - {off}) / 100 * (100 + {tax}) / 100"


def recipe(rng: np.random.Generator) -> tuple[str, str]:
    """Scaling a recipe to a different number of people."""
    people, grams, guests = int(rng.integers(2, 9)), 25 * int(rng.integers(4, 30)), 0
    while guests in (0, people):
        guests = int(rng.integers(2, 13))
    text = (
        f"A recipe for {people} people needs {grams} grams of flour. How many grams of flour "
        f"are needed for {guests} people?"
    )
    return text, f"{grams} / {people} * {guests}"


def savings(rng: np.random.Generator) -> tuple[str, str]:
    """Weekly savings minus a percentage spent."""
    name = _pick(rng, NAMES)
    weekly, weeks, spent = _money(rng, 5, 40), int(rng.integers(4, 30)), int(rng.integers(10, 90))
    text = (
        f"{name} saves ${weekly} every week for {weeks} weeks, then spends {spent}% of the "
        "savings on a bike. How many dollars are left?"
    )
    return text, f"{weekly} * {weeks} * (100 - {spent}) / 100"


def tiles(rng: np.random.Generator) -> tuple[str, str]:
    """Square tiles covering a rectangular floor exactly."""
    side = (20, 25, 40, 50)[int(rng.integers(4))]
    along, across = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    length, width = Fraction(along * side, 100), Fraction(across * side, 100)
    text = (
        f"A floor is {float(length):g} m long and {float(width):g} m wide. Square tiles measure "
        f"{side} cm on each side. How many tiles cover the floor exactly?"
    )
    return text, f"({float(length):g} * 100 / {side}) * ({float(width):g} * 100 / {side})"


def average_needed(rng: np.random.Generator) -> tuple[str, str]:
    """The score needed on the next test to reach a whole-number target average."""
    name = _pick(rng, NAMES)
    scores = [int(s) for s in rng.integers(55, 100, size=int(rng.integers(3, 6)))]
    tests = len(scores) + 1
    # A needed score from 40 to 100 that makes the target average a whole number.
    options = [n for n in range(40, 101) if (sum(scores) + n) % tests == 0]
    target = (sum(scores) + options[int(rng.integers(len(options)))]) // tests
    listed = ", ".join(str(s) for s in scores)
    text = (
        f"{name}'s first {len(scores)} test scores are {listed}. What score does {name} need on "
        f"the next test to average exactly {target} over all {tests} tests?"
    )
    return text, f"{target} * {tests} - ({' + '.join(str(s) for s in scores)})"


def two_pipes(rng: np.random.Generator) -> tuple[str, str]:
    """Minutes two pipes take together (work rates add)."""
    a, b = int(rng.integers(2, 13)), int(rng.integers(2, 13))
    text = (
        f"Pipe A fills a tank in {a} hours and pipe B fills it in {b} hours. How many minutes do "
        "the two pipes take to fill the tank together?"
    )
    return text, f"60 / (1 / {a} + 1 / {b})"


def ratio_share(rng: np.random.Generator) -> tuple[str, str]:
    """One person's share of an amount split in a ratio."""
    n1, n2, n3 = (NAMES[int(i)] for i in rng.choice(len(NAMES), size=3, replace=False))
    r1, r2, r3 = (int(r) for r in rng.integers(1, 8, size=3))
    total = 10 * int(rng.integers(10, 200))
    text = (
        f"{n1}, {n2} and {n3} share ${total} in the ratio {r1}:{r2}:{r3}. How many dollars does "
        f"{n2} get?"
    )
    return text, f"{total} * {r2} / ({r1} + {r2} + {r3})"


def compound_interest(rng: np.random.Generator) -> tuple[str, str]:
    """A balance after yearly compound interest (two or three years)."""
    principal, rate = 100 * int(rng.integers(5, 100)), int(rng.integers(1, 9))
    years = int(rng.integers(2, 4))
    text = (
        f"${principal} is deposited at {rate}% interest per year, compounded yearly. What is the "
        f"balance in dollars after {years} years (exact, not rounded)?"
    )
    return text, f"{principal} * (1 + {rate} / 100) ** {years}"


TEMPLATES: tuple[Template, ...] = (
    change,
    train_trip,
    discount_and_tax,
    recipe,
    savings,
    tiles,
    average_needed,
    two_pipes,
    ratio_share,
    compound_interest,
)


def is_nice(value: Fraction) -> bool:
    """Positive, below a billion, and a terminating decimal of at most ``MAX_PLACES`` places."""
    return 0 < value < 10**9 and (value * 10**MAX_PLACES).denominator == 1


def split_bucket(text: str) -> int:
    """Which of ten buckets a problem's text falls in (``zlib.crc32``, stable across runs)."""
    return zlib.crc32(text.encode("utf-8")) % 10


def make_problem(
    seed: int, template: Template, buckets: Collection[int] = range(10)
) -> tuple[str, str, int | float]:
    """``(text, expression, answer)`` for ``template`` from ``seed``.

    Draws repeat until the answer is nice and the text falls in one of ``buckets``: giving each
    split its own buckets keeps the same problem text out of two splits, whatever their sizes.
    The answer is an ``int`` when whole, else the ``float`` nearest to the exact decimal; with
    at most four places and fewer than 14 digits, JSON round-trips it exactly.
    """
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        text, expression = template(rng)
        value = evaluate(expression)
        if is_nice(value) and split_bucket(text) in buckets:
            whole = value.denominator == 1
            return text, expression, value.numerator if whole else float(value)
    raise RuntimeError(f"template {template.__name__} found no problem for seed {seed}")
