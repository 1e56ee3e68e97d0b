"""Builds the project's tiny default model and tokenizer as one HF folder.

    python -m mtrl_jax.models.make_default --out artifacts/tiny-qwen3 [--seed 0]

The tokenizer is a byte-level BPE trained on text from the built-in environments: for each
registered environment, oracle episodes (``mtrl_gym.play(..., oracle=True)``) give the system
prompts, tool schemas, the agent's tool calls and the tools' results, each also rendered through
the chat template so the markup is learnt in context. The model is a randomly initialised
Qwen3-style decoder (2 layers, width 128) whose vocabulary is the tokenizer's. The folder loads
with :func:`load_pretrained` / :func:`load_tokenizer` and with transformers'
``AutoModelForCausalLM`` / ``AutoTokenizer``. Everything is deterministic given ``--seed``
(episode seeds and weights) and needs no network; it takes a few seconds on a laptop CPU.

Non-goals: a *useful* model (the weights are random: the quickstart trains it), large corpora.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
from flax import nnx

import mtrl_gym
from mtrl_jax.models.config import DecoderConfig, RopeConfig
from mtrl_jax.models.decoder import Decoder
from mtrl_jax.models.pretrained import save_pretrained
from mtrl_jax.models.tokenizer import train_tokenizer

DEFAULT_VOCAB_SIZE = 2048
EPISODES_PER_ENV = 4


def gather_env_texts(*, seed: int = 0, episodes_per_env: int = EPISODES_PER_ENV) -> list[str]:
    """Text of oracle episodes of every registered environment, in a fixed order.

    Args:
        seed: first episode seed; episode ``k`` of each environment uses ``seed + k``.
        episodes_per_env: episodes played per environment.

    Returns:
        Strings: observations, actions, tool schemas and each episode rendered as chat text.
    """
    texts: list[str] = []
    for env_id in mtrl_gym.registered_env_ids():
        env = gym.make(env_id)
        try:
            for k in range(episodes_per_env):
                record = mtrl_gym.play(env, seed=seed + k, oracle=True)
                texts.extend(_episode_texts(record))
        finally:
            env.close()
    return texts


def _episode_texts(record: list[dict[str, Any]]) -> list[str]:
    reset_info = record[0]["info"]
    messages = list(reset_info.get("messages", []))
    texts = [record[0]["observation"], json.dumps(reset_info.get("tools", []))]
    for step in record[1:]:
        texts += [step["action"], step["observation"]]
        messages.append({"role": "assistant", "content": step["action"]})
        messages.extend(step["info"].get("messages", []))
    texts.append(_render_chatml(messages))
    return [t for t in texts if t]


def _render_chatml(messages: list[dict[str, Any]]) -> str:
    """ChatML text as the chat template writes it (tool results grouped in user turns).

    Plain Python rather than the Jinja template: the tokenizer does not exist yet.
    """
    out = []
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg.get("content") or ""
        if role != "tool":
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            continue
        if i == 0 or messages[i - 1]["role"] != "tool":
            out.append("<|im_start|>user")
        out.append(f"\n<tool_response>\n{content}\n</tool_response>")
        if i + 1 == len(messages) or messages[i + 1]["role"] != "tool":
            out.append("<|im_end|>\n")
    return "".join(out)


def default_config(vocab_size: int, *, eos_token_id: int, pad_token_id: int) -> DecoderConfig:
    """The quickstart architecture: Qwen3-style, 2 layers, width 128, tied embeddings.

    RoPE base 10,000 rather than Qwen3's 1,000,000: with 16 frequency pairs per head, the
    smaller base leaves more of them turning fast enough to tell nearby positions apart, which
    copying an id a few dozen tokens back relies on (the quickstart's contexts stay near 1,000).
    """
    return DecoderConfig(
        architecture="Qwen3ForCausalLM",
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        qk_norm=True,
        tie_word_embeddings=True,
        rope=RopeConfig(theta=10_000.0),
        max_position_embeddings=8192,
        bos_token_id=pad_token_id,  # as Qwen: no BOS is prepended; <|endoftext|> stands in
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_default(
    out: str | os.PathLike[str], *, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> Path:
    """Trains the tokenizer, initialises the model and writes both to ``out``.

    Args:
        out: target folder (created; existing files of the same names are replaced).
        seed: episode seeds for the corpus and the weight initialisation seed.
        vocab_size: target BPE vocabulary size.

    Returns:
        The folder, ready for :func:`load_pretrained` and :func:`load_tokenizer`.
    """
    out = Path(out)
    tokenizer = train_tokenizer(gather_env_texts(seed=seed), vocab_size=vocab_size)
    config = default_config(
        len(tokenizer),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = Decoder(config, rngs=nnx.Rngs(seed))
    save_pretrained(model, out)
    tokenizer.save_pretrained(str(out))
    # transformers 5 records its internal class name ("TokenizersBackend"); the generic fast
    # class name loads in transformers 4 as well, and 5 maps it to the same backend.
    tok_config_file = out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_file.write_text(json.dumps(tok_config, indent=2) + "\n")
    generation = {
        "eos_token_id": [config.eos_token_id, config.pad_token_id],
        "pad_token_id": config.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry: ``python -m mtrl_jax.models.make_default --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the HF model into")
    parser.add_argument("--seed", type=int, default=0, help="corpus and weight seed")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    out = build_default(args.out, seed=args.seed, vocab_size=args.vocab_size)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
