r"""Token-in-token-out sequence building of one episode: sampled tokens plus chat-template deltas.

The sampler's context for a session is the concatenation of everything sent to it and everything
it sampled. :class:`EpisodeSequence` keeps the training tokens identical to that context:

- sampled tokens are appended as they came (loss mask 1, with their log-probs and policy
  version) and never re-tokenised; the assistant text given to the environment is their decode;
- environment messages are rendered with the chat template as a *delta*: the conversation is
  rendered with the new messages (and the generation prompt), the text already in the context is
  checked to be a prefix of it, and only the suffix is tokenised (loss mask 0). The delta
  therefore contains whatever the template writes between turns, e.g.
  ``<|im_end|>\n<|im_start|>user\n<tool_response>...<|im_end|>\n<|im_start|>assistant\n``.

When the prefix check fails, the template has rewritten history (e.g. dropped an earlier
``<think>`` block), so the old context is no longer what the model would see: the episode starts
a new training sample (and a new sampler session) from the full rendering. A record with one
sample is ``"extended"``, with more ``"per_turn"``.

Non-goals: talking to the sampler or the environment (the engine does), loss weighting
(``mtrl_jax.trajectory``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class ChatTokenizer(Protocol):
    """The part of a transformers tokenizer the rollout uses."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...  # noqa: D102

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...  # noqa: D102

    def decode(self, token_ids: Sequence[int], **kwargs: Any) -> str: ...  # noqa: D102


class SampleLike(Protocol):
    """What the sampler returns for one ``generate`` call (``mtrl_jax.sampler.SampleResult``)."""

    tokens: list[int]
    logprobs: list[float]
    model_logprobs: list[float]
    policy_version: int
    stop_reason: str


class EpisodeSequence:
    """The growing token sequence(s) of one episode.

    Args:
        tokenizer: Renders the chat template and encodes / decodes text.
        stop_token_ids: Tokens that end an assistant turn; a trailing one is stripped from the
            text handed to the environment (it stays in the tokens).
        tools: Tool schemas for the template's system turn (``info["tools"]`` at reset).
    """

    def __init__(
        self,
        tokenizer: ChatTokenizer,
        *,
        stop_token_ids: Sequence[int] = (),
        tools: list[dict[str, Any]] | None = None,
    ):
        self.tokenizer = tokenizer
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.tools = tools or None
        self.messages: list[dict[str, Any]] = []
        self.tokens: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self.sampling_logprobs: list[float] = []
        self.policy_version: list[int] = []
        self.turn_spans: list[tuple[int, int]] = []
        self.sample_starts: list[int] = []
        # Text of the current sample's context as the template would render it; None before the
        # first prompt. Compared (as text, never re-tokenised) with the next rendering.
        self._text: str | None = None

    def _render(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=True
        )

    def add_messages(self, new_messages: Sequence[dict[str, Any]]) -> tuple[list[int], bool]:
        """Appends environment messages and the next generation prompt (loss mask 0).

        Args:
            new_messages: The environment's new messages (``info["messages"]``).

        Returns:
            The token ids to send to the sampler, and whether they start a new sample (then the
            caller must use a fresh sampler session: the old context is not a prefix).
        """
        messages = [*self.messages, *(dict(m) for m in new_messages)]
        full = self._render(messages)
        extends = self._text is not None and full.startswith(self._text)
        delta = full[len(self._text) :] if extends else full  # type: ignore[arg-type]
        if not extends:
            self.sample_starts.append(len(self.tokens))
        ids = [int(t) for t in self.tokenizer.encode(delta, add_special_tokens=False)]
        self._append(ids, mask=0, logp=[0.0] * len(ids), slogp=[0.0] * len(ids), version=-1)
        self.messages, self._text = messages, full
        return ids, not extends

    def add_sample(self, result: SampleLike) -> str:
        """Appends a sampled assistant turn (loss mask 1) and returns its text for the env.

        The text is the decode of the sampled tokens (a trailing stop token removed); it is
        recorded as the assistant message, so the next rendering contains it verbatim.
        """
        ids = [int(t) for t in result.tokens]
        if not (len(ids) == len(result.logprobs) == len(result.model_logprobs)):
            raise ValueError("the sampler returned tokens and log-probs of different lengths")
        body = ids[:-1] if ids and ids[-1] in self.stop_token_ids else ids
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        tail = self.tokenizer.decode(ids[len(body) :], skip_special_tokens=False)
        start = len(self.tokens)
        self._append(
            ids,
            mask=1,
            logp=[float(x) for x in result.model_logprobs],
            slogp=[float(x) for x in result.logprobs],
            version=int(result.policy_version),
        )
        self.turn_spans.append((start, len(self.tokens)))
        self.messages.append({"role": "assistant", "content": text})
        self._text = (self._text or "") + text + tail
        return text

    def discard_prompt(self, num_tokens: int, started_sample: bool) -> None:
        """Removes the last prompt of ``num_tokens`` the sampler refused (context full).

        The record must only hold tokens the sampler saw; the refused environment messages stay
        in ``messages`` (the conversation happened) but not in the tokens.
        """
        if num_tokens:
            for name in ("tokens", "loss_mask", "logprobs", "sampling_logprobs", "policy_version"):
                del getattr(self, name)[-num_tokens:]
        if started_sample:
            self.sample_starts.pop()
        self._text = None  # the next prompt, if any, cannot extend a context that was cut

    def _append(
        self, ids: list[int], *, mask: int, logp: list[float], slogp: list[float], version: int
    ) -> None:
        self.tokens += ids
        self.loss_mask += [mask] * len(ids)
        self.logprobs += logp
        self.sampling_logprobs += slogp
        self.policy_version += [version] * len(ids)

    def sample_tokens(self, index: int) -> list[int]:
        """The tokens of training sample ``index`` (what its sampler session saw, in order)."""
        ends = [*self.sample_starts[1:], len(self.tokens)]
        return self.tokens[self.sample_starts[index] : ends[index]]

    def arrays(self) -> dict[str, Any]:
        """The per-token arrays and boundaries, as ``TrajectoryRecord`` fields."""
        return {
            "tokens": np.asarray(self.tokens, np.int32),
            "loss_mask": np.asarray(self.loss_mask, np.int8),
            "logprobs": np.asarray(self.logprobs, np.float32),
            "sampling_logprobs": np.asarray(self.sampling_logprobs, np.float32),
            "policy_version": np.asarray(self.policy_version, np.int32),
            "turn_spans": list(self.turn_spans),
            "sample_starts": list(self.sample_starts) or [0],
            "mode": "extended" if len(self.sample_starts) <= 1 else "per_turn",
        }
