"""Fixtures for the sampler tests: one tiny Qwen3 checkpoint and a mock tokenizer.

Every engine built through :func:`make_engine` has the same slot count, cache length and
buckets, so tests share the compiled prefill and decode programs (one set per sampling mode).
Its prefill batches all slots' rows (``prefill_rows=NUM_SLOTS``, not the CPU default of 1), so
the batched path is what the tests check, and its decode calls attend to live-slot buckets from
16 slots up (not the default 128, which would cover this whole small cache).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from mtrl_jax.models import load_pretrained
from mtrl_jax.sampler import SamplerConfig, SamplingEngine
from tests.mtrl_jax.models.helpers import VOCAB, Checkpoint, make_checkpoint

NUM_SLOTS = 3
MAX_LEN = 64
BUCKETS = (8, 32)
MIN_LIVE_SLOTS = 16


class PairTokenizer:
    """Token ``i`` decodes to two letters, so stop strings can end inside a token."""

    def decode(self, ids: list[int]) -> str:
        """``"".join`` of each id's two letters."""
        return "".join(chr(97 + i % 26) + chr(65 + i // 26) for i in ids)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """A tiny random Qwen3 (untied head, head_dim 24) made with transformers and saved to disk."""
    return make_checkpoint("qwen3_untied", tmp_path_factory.mktemp("qwen3_untied"))


@pytest.fixture(scope="session")
def model(checkpoint: Checkpoint) -> Any:
    """The checkpoint loaded with :func:`load_pretrained` (float32)."""
    return load_pretrained(checkpoint.path)


@pytest.fixture(scope="session")
def make_engine(model: Any) -> Any:
    """``make_engine(seed=0, **config) -> SamplingEngine`` with the shared shapes."""

    def make(
        seed: int = 0,
        *,
        steps: int = 1,
        prefix_reuse: bool = True,
        prefill_rows: int = NUM_SLOTS,
        **config: Any,
    ) -> SamplingEngine:
        # Live-slot buckets 16, 32, ..., 96, 97 (the whole cache): decode calls attend to part
        # of the cache, so every comparison with a full forward also checks that cut.
        config = {"min_live_slots": MIN_LIVE_SLOTS, **config}
        cfg = SamplerConfig(prefill_buckets=BUCKETS, **config)
        return SamplingEngine(
            model,
            num_slots=NUM_SLOTS,
            max_len=MAX_LEN,
            tokenizer=PairTokenizer(),
            config=cfg,
            key=jax.random.key(seed),
            decode_steps_per_call=steps,
            prefix_reuse=prefix_reuse,
            prefill_rows=prefill_rows,
        )

    return make


def prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    """Deterministic prompts of the given lengths."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=n).tolist() for n in lengths]
