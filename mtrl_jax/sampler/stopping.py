"""Per-turn stop conditions, checked on the host after every sampled token.

A turn stops at the first of:

* ``stop_token``: the sampled id is one of ``stop_token_ids`` (EOS, end-of-turn). The stop
  token is kept in the output: the learner must see and train on it.
* ``stop_string``: the detokenised continuation of this turn contains one of
  ``stop_strings`` (e.g. ``</tool_call>``). **Token-boundary rule:** the output keeps whole
  tokens up to and including the token that completes the first occurrence of the stop string,
  and nothing after it. Checking after every token means that token is always the last one.
  If it carries text past the stop string (``</tool_call>`` and a newline as one token), that
  text stays: cutting inside a token would leave ids that do not re-tokenise to what was
  sampled.
  Only this turn's sampled tokens are searched, never the prompt.
* ``max_new_tokens`` / ``context_full``: the per-turn limit (the smaller of the request's
  ``max_new_tokens`` and the session's remaining episode budget) or the context length.

Non-goals: regex stops, stop strings spanning turns, incremental detokenisers (the turn is
decoded in full each check; turns are short compared with a model forward step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtrl_jax.sampler.config import StopReason


class TurnStopper:
    """Accumulates one turn's tokens and reports when and why it stops.

    Args:
        stop_token_ids: ids that end the turn (kept in the output).
        stop_strings: strings that end the turn (see the module docstring for the cut).
        limit: most tokens this turn may sample (``>= 1``).
        limit_reason: reported when ``limit`` is reached (``"max_new_tokens"`` or
            ``"context_full"``).
        tokenizer: anything with ``decode(list[int]) -> str``; required with stop strings.

    >>> class Chars:
    ...     def decode(self, ids): return "".join(chr(97 + i) for i in ids)
    >>> s = TurnStopper((), ("cd",), limit=10, limit_reason="max_new_tokens", tokenizer=Chars())
    >>> [s.push(i) for i in (0, 1, 2, 3)]
    [None, None, None, 'stop_string']
    """

    def __init__(
        self,
        stop_token_ids: Sequence[int],
        stop_strings: Sequence[str],
        *,
        limit: int,
        limit_reason: StopReason,
        tokenizer: Any = None,
    ) -> None:
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer (pass tokenizer= to the engine)")
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must be non-empty")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.stop_strings = tuple(stop_strings)
        self.limit = limit
        self.limit_reason = limit_reason
        self.tokenizer = tokenizer
        self.tokens: list[int] = []

    def push(self, token: int) -> StopReason | None:
        """Appends ``token``; returns the stop reason if the turn ends with it, else None."""
        self.tokens.append(int(token))
        if token in self.stop_token_ids:
            return "stop_token"
        if self.stop_strings:
            text = self.tokenizer.decode(self.tokens)
            if any(s in text for s in self.stop_strings):
                return "stop_string"
        if len(self.tokens) >= self.limit:
            return self.limit_reason
        return None
