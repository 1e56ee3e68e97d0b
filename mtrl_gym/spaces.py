"""A Gymnasium space of unicode text, for observations and actions of text environments.

Gymnasium's ``spaces.Text`` enumerates its character set: with all of unicode it takes seconds to
build, and its default alphanumeric charset rejects ordinary text (spaces, punctuation, newlines).
:class:`TextSpace` accepts any ``str`` up to a maximum length and builds instantly.

Non-goals: tokenisation (lengths are in characters) and flattening to arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

# Sampling mixes printable ASCII (tool-call markup is ASCII), whitespace and some non-ASCII
# ranges so that random actions exercise parsers on realistic and unusual text alike.
_SAMPLE_RANGES = ((0x20, 0x7E), (0x09, 0x0A), (0xA0, 0x24F), (0x370, 0x3FF), (0x4E00, 0x4FFF))


class TextSpace(spaces.Space[str]):
    """Any unicode string of at most ``max_length`` characters.

    >>> space = TextSpace(max_length=10)
    >>> space.contains("héllo, 世界"), space.contains("x" * 11), space.contains(b"bytes")
    (True, False, False)
    """

    def __init__(
        self,
        max_length: int = 1_000_000,
        *,
        sample_length: int = 64,
        seed: int | np.random.Generator | None = None,
    ):
        if max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        self.max_length = int(max_length)
        self.sample_length = min(int(sample_length), self.max_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Text cannot be flattened into a fixed-size array."""
        return False

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is a ``str`` no longer than ``max_length``."""
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random string of up to ``sample_length`` characters from ``self.np_random``."""
        if mask is not None or probability is not None:
            raise NotImplementedError("TextSpace.sample does not support masks or probabilities")
        n = int(self.np_random.integers(0, self.sample_length + 1))
        which = self.np_random.integers(0, len(_SAMPLE_RANGES), size=n)
        chars = [
            chr(int(self.np_random.integers(lo, hi + 1)))
            for lo, hi in (_SAMPLE_RANGES[i] for i in which)
        ]
        return "".join(chars)

    def to_jsonable(self, sample_n: Any) -> list[str]:
        """Strings are already JSON."""
        return list(sample_n)

    def from_jsonable(self, sample_n: Any) -> list[str]:
        """Strings are already JSON."""
        return list(sample_n)

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length
