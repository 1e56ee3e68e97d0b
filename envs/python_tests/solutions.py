"""Reference solutions of the PythonTests task bank; each docstring is the spec the agent reads.

Every function is self-contained (no imports outside its body, no helpers), because its source,
taken with ``inspect.getsource``, is also what the oracle submits. The expected outputs of all
visible and hidden tests are computed by calling these functions in the trusted parent process;
they never enter the sandbox.

Non-goals: clever or fastest solutions (clear ones make the oracle's trajectories readable).
"""


def fizzbuzz(n: int) -> list[str]:
    """Returns the FizzBuzz strings for the numbers 1 to n.

    A number is "Fizz" if a multiple of 3, "Buzz" if a multiple of 5, "FizzBuzz" if both, and
    otherwise the number itself as a string. n <= 0 gives [].
    """
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out


def is_palindrome(text: str) -> bool:
    """Tells whether text is a palindrome.

    Case is ignored, and so is every character that is not a letter or a digit.
    """
    kept = [c.lower() for c in text if c.isalnum()]
    return kept == kept[::-1]


def run_length_encode(text: str) -> str:
    """Run-length encodes text.

    Each run of one repeated character becomes the character followed by the run's length:
    "aaab" -> "a3b1". Characters are case-sensitive; "" gives "".
    """
    out = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        out.append(f"{text[i]}{j - i}")
        i = j
    return "".join(out)


def second_largest(numbers: list[int]) -> int | None:
    """Returns the second largest distinct value, or None if there are fewer than two."""
    distinct = sorted(set(numbers))
    return distinct[-2] if len(distinct) >= 2 else None


def flatten(nested: list) -> list:
    """Flattens arbitrarily nested lists into one flat list, keeping the order of the elements."""
    out = []
    for item in nested:
        if isinstance(item, list):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out


def roman_to_int(numeral: str) -> int:
    """Converts a Roman numeral to an integer.

    The symbols are I, V, X, L, C, D and M, with the subtractive pairs IV, IX, XL, XC, CD, CM.
    """
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for i, char in enumerate(numeral):
        value = values[char]
        if i + 1 < len(numeral) and values[numeral[i + 1]] > value:
            total -= value
        else:
            total += value
    return total


def int_to_roman(number: int) -> str:
    """Converts an integer from 1 to 3999 to a Roman numeral.

    Use the subtractive pairs IV, IX, XL, XC, CD and CM, as in 1994 -> "MCMXCIV".
    """
    table = (
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    )
    out = []
    for value, symbol in table:
        count, number = divmod(number, value)
        out.append(symbol * count)
    return "".join(out)


def merge_intervals(intervals: list[list[int]]) -> list[list[int]]:
    """Merges overlapping closed intervals.

    Intervals are [start, end] lists; two overlap when they share at least one point. Returns
    the merged intervals sorted by start.
    """
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def word_frequencies(text: str) -> dict[str, int]:
    """Counts the words of text.

    A word is a maximal run of the letters a-z once text is lowercased. Returns a dict from
    each word to its count.
    """
    import re

    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z]+", text.lower()):
        counts[word] = counts.get(word, 0) + 1
    return counts


def rotate_right(items: list, k: int) -> list:
    """Returns a new list with items rotated right by k positions.

    k may be larger than the length, or negative (a rotation to the left).
    """
    if not items:
        return []
    k %= len(items)
    return items[-k:] + items[:-k] if k else list(items)


def gcd_of_list(numbers: list[int]) -> int:
    """Returns the greatest common divisor of the numbers' absolute values.

    An empty list, or a list of zeros, gives 0.
    """
    import math

    result = 0
    for n in numbers:
        result = math.gcd(result, abs(n))
    return result


def first_index(items: list[int], target: int) -> int:
    """Returns the index of the first occurrence of target in items, or -1.

    The items are sorted in ascending order.
    """
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(items) and items[lo] == target else -1


def caesar(text: str, shift: int) -> str:
    """Applies a Caesar cipher to text.

    Every ASCII letter moves shift places along the alphabet, wrapping around and keeping its
    case; all other characters stay as they are. shift may be negative or above 26.
    """
    out = []
    for char in text:
        if "a" <= char <= "z" or "A" <= char <= "Z":
            base = ord("a") if char.islower() else ord("A")
            out.append(chr(base + (ord(char) - base + shift) % 26))
        else:
            out.append(char)
    return "".join(out)


def is_balanced(text: str) -> bool:
    """Tells whether the brackets in text are balanced.

    The brackets (), [] and {} must be balanced and properly nested; every other character is
    ignored.
    """
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def primes_up_to(limit: int) -> list[int]:
    """Returns all primes p with 2 <= p <= limit, in ascending order."""
    if limit < 2:
        return []
    sieve = [True] * (limit + 1)
    sieve[0] = sieve[1] = False
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = [False] * len(range(i * i, limit + 1, i))
    return [i for i, prime in enumerate(sieve) if prime]


def camel_to_snake(name: str) -> str:
    """Converts camelCase or PascalCase to snake_case.

    Insert "_" before every capital letter that follows a lowercase letter or a digit, then
    lowercase everything: "getHTTPResponse" -> "get_httpresponse".
    """
    out = []
    for i, char in enumerate(name):
        if char.isupper() and i > 0 and (name[i - 1].islower() or name[i - 1].isdigit()):
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def max_subarray_sum(numbers: list[int]) -> int:
    """Returns the largest sum of a non-empty contiguous part of numbers (never empty)."""
    best = current = numbers[0]
    for n in numbers[1:]:
        current = max(n, current + n)
        best = max(best, current)
    return best


def are_anagrams(first: str, second: str) -> bool:
    """Tells whether two strings are anagrams.

    They are when they hold the same characters the same number of times, ignoring case and
    spaces.
    """
    return sorted(first.lower().replace(" ", "")) == sorted(second.lower().replace(" ", ""))


def transpose(matrix: list[list[int]]) -> list[list[int]]:
    """Transposes a rectangular matrix given as a list of rows; an empty matrix gives []."""
    return [list(column) for column in zip(*matrix, strict=True)]


def summarize_ranges(numbers: list[int]) -> list[str]:
    """Summarises sorted numbers as ranges.

    The numbers are ascending without duplicates. Each run of consecutive numbers becomes
    "a-b", or "a" for a run of one: [0, 1, 2, 4] -> ["0-2", "4"].
    """
    out = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return out


def fibonacci(n: int) -> int:
    """Returns the n-th Fibonacci number, with F(0) = 0 and F(1) = 1.

    n is between 0 and 90, and the function must be fast for n = 90.
    """
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def parse_duration(text: str) -> int:
    """Converts a duration such as "1h30m", "45s" or "2h5s" to seconds.

    The units are h, m and s, each at most once and in that order, each after a whole number.
    """
    import re

    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not match:
        raise ValueError(f"bad duration {text!r}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def median(numbers: list[int]) -> float:
    """Returns the median of a non-empty list, as a float.

    That is the middle value, or the mean of the two middle values when the length is even.
    """
    ordered = sorted(numbers)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def spiral_order(matrix: list[list[int]]) -> list[int]:
    """Returns the elements of a matrix in clockwise spiral order.

    The matrix is rectangular, given as a list of rows; the spiral starts at the top-left
    corner. An empty matrix gives [].
    """
    out: list[int] = []
    rows = [list(r) for r in matrix]
    while rows:
        out.extend(rows.pop(0))
        rows = [list(r) for r in zip(*rows, strict=True)][::-1]
    return out
