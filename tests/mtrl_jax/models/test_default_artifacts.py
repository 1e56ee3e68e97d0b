"""The default tokenizer and model: one command, deterministic, loadable by us and transformers."""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import mtrl_gym
from mtrl_jax.models import build_default, load_pretrained, load_tokenizer
from mtrl_jax.models.make_default import main
from mtrl_jax.models.tokenizer import CONTROL_TOKENS, MARKUP_TOKENS
from tests.mtrl_jax.models.helpers import max_rel_error, run_forward


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    return main(["--out", str(tmp_path_factory.mktemp("default")), "--seed", "0"])


@pytest.fixture(scope="module")
def tokenizer(default_dir):
    return load_tokenizer(default_dir)


@pytest.fixture(scope="module")
def episode():
    """An oracle OrderLookup episode as chat messages, with the env's tool schemas."""
    env = gym.make("mtrl/OrderLookup-v0")
    record = mtrl_gym.play(env, seed=0, oracle=True)
    env.close()
    messages = list(record[0]["info"]["messages"])
    for step in record[1:]:
        messages.append({"role": "assistant", "content": step["action"]})
        messages += step["info"]["messages"]
    return messages, record[0]["info"]["tools"]


def _digest(folder):
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.iterdir())
        if f.is_file()
    }


def test_build_default__deterministic_for_a_seed(default_dir, tmp_path):
    assert _digest(build_default(tmp_path / "again", seed=0)) == _digest(default_dir)
    files = set(_digest(default_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files


def test_build_default__loads_here_and_in_transformers(default_dir, tokenizer, episode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = load_pretrained(default_dir)
    cfg = model.config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size) == ("Qwen3ForCausalLM", 2, 128)
    assert cfg.qk_norm and cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tokenizer) == 2048
    assert (
        cfg.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    messages, tools = episode
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    ids = np.array([tokenizer(text)["input_ids"]], np.int32)
    theirs_tok = AutoTokenizer.from_pretrained(default_dir)
    assert theirs_tok(text)["input_ids"] == ids[0].tolist()
    hf = AutoModelForCausalLM.from_pretrained(default_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    assert max_rel_error(run_forward(model, ids), ref) < 1e-4


def test_tokenizer__special_tokens_are_single_ids_and_text_round_trips(tokenizer, episode):
    for token in (*CONTROL_TOKENS, *MARKUP_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) < 9, token  # reserved at the front
        assert len(tokenizer(token)["input_ids"]) == 1, token
    messages, _ = episode
    for message in messages:
        ids = tokenizer(message["content"])["input_ids"]
        assert tokenizer.decode(ids) == message["content"]
    odd = "naïve café — 日本語 \t\n émoji 🙂 <tool_call>{}</tool_call><|im_end|>"
    ids = tokenizer(odd)["input_ids"]
    assert tokenizer.decode(ids) == odd  # byte-level: text unseen in training still round-trips
    # Markup survives skip_special_tokens (the agent's calls stay readable); control does not.
    assert tokenizer.decode(ids, skip_special_tokens=True) == odd.removesuffix("<|im_end|>")


def test_chat_template__tools_calls_and_responses_hermes_style(tokenizer):
    tools = [{"type": "function", "function": {"name": "get_order", "parameters": {}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is O-1?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_order", "arguments": {"id": 1}}},
                {"name": "get_order", "arguments": '{"id": 2}'},  # arguments as a JSON string
            ],
        },
        {"role": "tool", "content": '{"status": "sent"}'},
        {"role": "tool", "content": "error: no such order"},
    ]
    text = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    tools_json = json.dumps(tools[0])
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\n")
    assert f"<tools>\n{tools_json}\n</tools>" in text
    assert text.endswith(
        "<|im_start|>user\nWhere is O-1?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_order", "arguments": {"id": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_order", "arguments": {"id": 2}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        '<tool_response>\n{"status": "sent"}\n</tool_response>\n'
        "<tool_response>\nerror: no such order\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without tools: a plain ChatML system turn, and no generation prompt unless asked.
    plain = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert plain == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is O-1?<|im_end|>\n"
    )
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_chat_template__one_more_turn_only_appends(tokenizer, episode):
    # The rollout keeps one token sequence per trajectory: rendering the prompt, then appending
    # the sampled reply and the env's next turn must equal rendering the longer conversation.
    messages, tools = episode
    for k in range(2, len(messages)):
        if messages[k]["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:k], tools=tools, tokenize=False, add_generation_prompt=True
        )
        longer = tokenizer.apply_chat_template(messages[: k + 1], tools=tools, tokenize=False)
        assert longer == prompt + messages[k]["content"] + "<|im_end|>\n"


def test_load_tokenizer__missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


@pytest.mark.parametrize("ident", ["P392", "U31", "O7", "P1004"])
def test_tokenizer__an_id_has_the_same_tokens_in_prose_json_and_line_start(tokenizer, ident):
    # The agent copies ids from the task text into JSON tool arguments: one letter token, then one
    # token per digit, however the id is surrounded.
    want = list(ident)
    for text in (f"parcel {ident} is late", f'{{"id": "{ident}"}}', ident):
        pieces = [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]
        starts = [k for k in range(len(pieces)) if pieces[k : k + len(want)] == want]
        assert len(starts) == 1, (text, pieces)
