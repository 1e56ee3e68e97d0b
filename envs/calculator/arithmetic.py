"""A safe, exact arithmetic evaluator: the ``calculator`` tool's engine.

Expressions are parsed with :mod:`ast` and only numbers, ``+ - * / // % **`` and parentheses are
interpreted; nothing is ever passed to ``eval``. Arithmetic is exact, with
:class:`fractions.Fraction` (decimal literals are read as the decimals they spell, so
``0.1 + 0.2`` is exactly ``0.3``), and results print as integers, exact decimals, or a fraction
with an approximation when the decimal does not terminate.

Every way an expression can be too costly is refused up front with :class:`CalculatorError`
(the agent's mistake): source length, nesting depth, exponent size, and the size of any
intermediate result. So a hostile expression such as ``9 ** 9 ** 9`` costs microseconds, not
the machine, and needs no subprocess.

Non-goals: functions (sqrt, log) and floating-point semantics; word problems stay exact.
"""

from __future__ import annotations

import ast
from fractions import Fraction

MAX_CHARS = 500
# Each operator nests one level (a chain of 150 additions is 150 deep); Python's recursion
# limit is far above this.
MAX_DEPTH = 200
MAX_EXPONENT = 1000
# Bits of any numerator or denominator (about 300 decimal digits).
MAX_BITS = 1000

_BINARY = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}


class CalculatorError(ValueError):
    """The expression is invalid or too costly; the message says why, for the agent."""


def evaluate(expression: str) -> Fraction:
    """Evaluates an arithmetic expression exactly.

    >>> evaluate("0.1 + 0.2") == Fraction(3, 10), evaluate("(2 + 3) * 4 ** 2")
    (True, Fraction(80, 1))

    Raises:
        CalculatorError: Anything but numbers, operators and parentheses, or a result too large.
    """
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"invalid expression: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, absurd nesting
        raise CalculatorError("invalid expression") from None
    return _eval(tree.body, 0)


def _eval(node: ast.expr, depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Constant):
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        return _checked(_apply(_BINARY[type(node.op)], left, right))
    found = {
        ast.Call: "a function call",
        ast.Name: "a name",
        ast.Attribute: "an attribute",
        ast.Compare: "a comparison",
    }.get(type(node), f"{type(node).__name__} syntax")
    raise CalculatorError(
        f"only numbers, + - * / // % ** and parentheses are allowed (found {found})"
    )


def _number(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"only numbers are allowed, not {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CalculatorError("the number is too large")
        # repr gives the shortest decimal that reads back as this float: the literal's decimal.
        return _checked(Fraction(repr(value)))
    return _checked(Fraction(value))


def _apply(op: str, left: Fraction, right: Fraction) -> Fraction:
    if op in ("/", "//", "%") and right == 0:
        raise CalculatorError("division by zero")
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        return left / right
    if op == "//":
        return Fraction(left // right)
    if op == "%":
        return left % right
    if right.denominator != 1:
        raise CalculatorError("exponents must be whole numbers")
    exponent = right.numerator
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponents are limited to {MAX_EXPONENT}")
    size = max(left.numerator.bit_length(), left.denominator.bit_length())
    # Refuse before computing: the result has at most size * |exponent| bits. Up to twice the
    # limit is cheap to compute, and _checked then applies the exact limit.
    if size * abs(exponent) > 2 * MAX_BITS:
        raise CalculatorError("the result would be too large")
    if left == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    return left**exponent


def _checked(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise CalculatorError("a number in the calculation is too large")
    return value


def format_value(value: Fraction) -> str:
    """The exact result as text: ``42``, ``-12.375``, or ``10/3 (about 3.3333333333)``.

    >>> format_value(Fraction(-99, 8)), format_value(Fraction(10, 3))
    ('-12.375', '10/3 (about 3.3333333333)')
    """
    if value.denominator == 1:
        return str(value.numerator)
    rest, places = value.denominator, 0
    for prime in (2, 5):
        count = 0
        while rest % prime == 0:
            rest //= prime
            count += 1
        places = max(places, count)
    if rest != 1:  # does not terminate: show the fraction and a rounded decimal
        about = round(value, 10)
        return f"{value.numerator}/{value.denominator} (about {_decimal(about, 10)})"
    return _decimal(value, places)


def _decimal(value: Fraction, places: int) -> str:
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"-{text}" if value < 0 else text
