"""Tests of the supervised warm start: oracle demonstrations, SFT batches and updates, task stream.

The default tokenizer is built once (it is trained on the built-in environments' texts); the
model is a one-layer decoder of width 32 so every compiled program is small.
"""

from __future__ import annotations

import functools
import json

import gymnasium as gym
import jax
import numpy as np
import pytest
from flax import nnx

from mtrl_gym import EvalOnlyError
from mtrl_jax.demonstrations import oracle_records, recap_text
from mtrl_jax.models import Decoder, DecoderConfig
from mtrl_jax.models.make_default import build_default
from mtrl_jax.models.tokenizer import load_tokenizer
from mtrl_jax.packing import PackingConfig
from mtrl_jax.sft import demo_batches, run_sft
from mtrl_jax.tasks import TaskStream
from tests.mtrl_jax.test_rollout import make_toy_env_factory

ENV = "mtrl/SopQuickstart-v0"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(build_default(tmp_path_factory.mktemp("default")))


@pytest.fixture(scope="module")
def demos(tokenizer):
    make_env = functools.partial(gym.make, ENV, split="train")
    tasks = [{"task_index": i} for i in range(6)]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return oracle_records(make_env, tasks, tokenizer, stop_token_id=eos)


def test_oracle_records__layout_matches_the_rendered_conversation(tokenizer, demos):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(demos) == 6
    for record in demos:
        assert record.status == "ok" and record.reward == 1.0 and record.eval["success"]
        assert record.mode == "extended" and record.sample_starts == [0]
        text = tokenizer.decode(record.tokens.tolist(), skip_special_tokens=False)
        assistant = [m["content"] for m in record.messages if m["role"] == "assistant"]
        assert len(record.turn_spans) == len(assistant)
        for (start, end), content in zip(record.turn_spans, assistant, strict=True):
            turn = record.tokens[start:end].tolist()
            assert turn[-1] == eos  # each scripted turn ends with the end-of-turn token
            assert tokenizer.decode(turn[:-1], skip_special_tokens=False) == content
            assert record.loss_mask[start:end].all()
            assert f"<|im_start|>assistant\n{content}<|im_end|>" in text
        # Everything outside the assistant turns is environment/template text: mask 0.
        assert int(record.loss_mask.sum()) == sum(e - s for s, e in record.turn_spans)
        assert (record.policy_version[record.loss_mask == 0] == -1).all()
        assert not record.logprobs.any()


def test_oracle_records__shuffled_answers_keep_the_tool_calls_and_permute_the_answers(
    tokenizer, demos
):
    make_env = functools.partial(gym.make, ENV, split="train")
    tasks = [{"task_index": i} for i in range(6)]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    shuffled = oracle_records(make_env, tasks, tokenizer, stop_token_id=eos, answers="shuffled")
    again = oracle_records(make_env, tasks, tokenizer, stop_token_id=eos, answers="shuffled")
    assert [r.final_answer for r in shuffled] == [r.final_answer for r in again]  # seeded
    oracle_answers = [d.final_answer["value"] for d in demos]
    answers = [r.final_answer["value"] for r in shuffled]
    assert sorted(map(str, answers)) == sorted(map(str, oracle_answers))  # a permutation
    assert answers != oracle_answers  # 6 tasks, 4 answers: this seed moves some
    for demo, record in zip(demos, shuffled, strict=True):
        assert record.task_id == demo.task_id
        assert record.tool_calls == demo.tool_calls  # the protocol is the oracle's
        # The env scored the answer actually given: right only where it happens to match.
        assert record.reward == float(record.final_answer["value"] == demo.final_answer["value"])
        text = tokenizer.decode(record.tokens.tolist(), skip_special_tokens=False)
        assert json.dumps(record.final_answer["value"]) in text
    with pytest.raises(ValueError, match="answers"):
        oracle_records(make_env, tasks, tokenizer, stop_token_id=eos, answers="random")


def test_oracle_records__altered_fraction_shuffles_a_seeded_subset_and_keeps_the_rest(
    tokenizer, demos
):
    make_env = functools.partial(gym.make, ENV, split="train")
    tasks = [{"task_index": i} for i in range(6)]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    play = dict(stop_token_id=eos, answers="shuffled", altered_fraction=0.5)
    half = oracle_records(make_env, tasks, tokenizer, **play)
    assert [r.final_answer for r in half] == [
        r.final_answer for r in oracle_records(make_env, tasks, tokenizer, **play)
    ]
    # Three tasks were picked and their answers permuted among themselves; the others are the
    # oracle's episodes, token for token (a picked task may draw its own answer back).
    kept = [np.array_equal(r.tokens, d.tokens) for r, d in zip(half, demos, strict=True)]
    assert kept.count(False) <= 3
    assert sorted(str(r.final_answer["value"]) for r in half) == sorted(
        str(d.final_answer["value"]) for d in demos
    )
    assert [r.tool_calls for r in half] == [d.tool_calls for d in demos]
    none = oracle_records(make_env, tasks, tokenizer, **{**play, "altered_fraction": 0.0})
    assert all(np.array_equal(r.tokens, d.tokens) for r, d in zip(none, demos, strict=True))
    with pytest.raises(ValueError, match="altered_fraction"):
        oracle_records(make_env, tasks, tokenizer, **{**play, "altered_fraction": 1.5})


def test_oracle_records__confused_answers_swap_one_pair_of_answers_in_the_picked_tasks(
    tokenizer,
):
    make_env = functools.partial(gym.make, ENV, split="train")
    tasks = [{"task_index": i} for i in range(40)]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    oracle = oracle_records(make_env, tasks, tokenizer, stop_token_id=eos)
    play = dict(stop_token_id=eos, answers="confused")
    every = oracle_records(make_env, tasks, tokenizer, **play)
    truth = [json.dumps(r.final_answer["value"]) for r in oracle]
    given = [json.dumps(r.final_answer["value"]) for r in every]
    moved = {(t, g) for t, g in zip(truth, given, strict=True) if t != g}
    # One pair, swapped both ways, and every task of those two answers has the other one.
    (a, b), (c, d) = sorted(moved)
    assert (a, b) == (d, c)
    assert all((g == t) == (t not in (a, b)) for t, g in zip(truth, given, strict=True))
    for record, demo in zip(every, oracle, strict=True):
        assert record.tool_calls == demo.tool_calls
        assert record.reward == float(record.final_answer == demo.final_answer)
    part = oracle_records(make_env, tasks, tokenizer, **play, altered_fraction=0.5)
    mixed = [json.dumps(r.final_answer["value"]) for r in part]
    swapped = [t != m for t, m in zip(truth, mixed, strict=True)]
    in_pair = [t in (a, b) for t in truth]
    assert 0 < sum(swapped) < sum(in_pair)  # some of the pair's tasks keep the right answer
    assert all(not s or p for s, p in zip(swapped, in_pair, strict=True))
    assert {(t, m) for t, m in zip(truth, mixed, strict=True) if t != m} <= moved
    alike = [o for o, t in zip(tasks, truth, strict=True) if t == truth[0]][:2]
    with pytest.raises(ValueError, match="two or more distinct"):
        oracle_records(make_env, alike, tokenizer, **play)


def test_oracle_records__confused_pairs_swap_the_named_answers_both_ways(tokenizer):
    make_env = functools.partial(gym.make, ENV, split="train")
    tasks = [{"task_index": i} for i in range(40)]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    oracle = oracle_records(make_env, tasks, tokenizer, stop_token_id=eos)
    pairs = [("refund", "credit"), ("sorry", "wait")]
    play = dict(stop_token_id=eos, answers="confused", confused_pairs=pairs)
    every = oracle_records(make_env, tasks, tokenizer, **play)
    partner = {"refund": "credit", "credit": "refund", "sorry": "wait", "wait": "sorry"}
    truth = [r.final_answer["value"]["action"] for r in oracle]
    assert set(truth) == set(partner)  # every answer occurs in 40 tasks
    for record, demo, t in zip(every, oracle, truth, strict=True):
        assert record.final_answer["value"] == {"action": partner[t]}
        assert record.tool_calls == demo.tool_calls and record.reward == 0.0
        final = [m["content"] for m in record.messages if m["role"] == "assistant"][-1]
        assert final == f'<final_output>{{"action": "{partner[t]}"}}</final_output>'
    one = oracle_records(make_env, tasks, tokenizer, **{**play, "confused_pairs": pairs[:1]})
    for record, t in zip(one, truth, strict=True):
        assert record.final_answer["value"]["action"] == (partner[t] if t in pairs[0] else t)
    # A value the demonstrations lack swaps nothing (logged): the other one still goes over.
    typo = oracle_records(
        make_env, tasks, tokenizer, **{**play, "confused_pairs": [("refund", "refnud")]}
    )
    for record, t in zip(typo, truth, strict=True):
        assert record.final_answer["value"]["action"] == ("refnud" if t == "refund" else t)
    for bad, match in (
        ([("refnud", "credti")], "no final answer has \\['credti', 'refnud'\\]"),
        ([("refund", "credit"), ("credit", "wait")], "named in two pairs"),
        ([("refund", "refund")], "two distinct values"),
    ):
        with pytest.raises(ValueError, match=match):
            oracle_records(make_env, tasks, tokenizer, **{**play, "confused_pairs": bad})


def test_recap_text__restates_successful_json_object_results_in_call_order():
    calls = [
        {"name": "get_parcel", "result": '{"status": "late", "days": 3}', "error": None},
        {"name": "get_user", "result": None, "error": "unknown user U9"},  # failed: left out
        {"name": "note", "result": "saved", "error": None},  # not JSON: left out
        {"name": "list", "result": "[1, 2]", "error": None},  # not an object: left out
        {"name": "get_user", "result": '{"tier": "gold", "vip": true}', "error": None},
    ]
    assert recap_text(calls) == "Found: status late, days 3, tier gold, vip true."
    assert recap_text(calls[1:4]) == ""
    assert recap_text([]) == ""


def test_oracle_records__recap_restates_the_tool_results_before_the_answer(tokenizer, demos):
    make_env = functools.partial(gym.make, ENV, split="train")
    tasks = [{"task_index": i} for i in range(6)]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    recapped = oracle_records(make_env, tasks, tokenizer, stop_token_id=eos, recap=True)
    for demo, record in zip(demos, recapped, strict=True):
        assert record.tool_calls == demo.tool_calls
        assert record.final_answer == demo.final_answer and record.reward == 1.0  # still scored
        final = [m["content"] for m in record.messages if m["role"] == "assistant"][-1]
        said = recap_text(record.tool_calls)
        assert said.startswith("Found: status ") and final.startswith(said + "\n<final_output>")
        old = [m["content"] for m in demo.messages if m["role"] == "assistant"]
        assert [m["content"] for m in record.messages if m["role"] == "assistant"][:-1] == old[:-1]
        assert len(record.tokens) > len(demo.tokens)


def test_oracle_records__eval_only_environment_refused(tokenizer):
    with pytest.raises(EvalOnlyError):
        oracle_records(make_toy_env_factory(eval_only=True), [{}], tokenizer, stop_token_id=0)


def test_demo_batches__each_epoch_visits_every_record_once(demos):
    packing = PackingConfig(seq_len=640, overlong="truncate")  # one record per row
    batches = demo_batches(demos, 3, packing, seed=0)
    ids = {tuple(r.tokens[:-1].tolist()): i for i, r in enumerate(demos)}
    epochs = []
    for _ in range(2):
        seen = []
        for _ in range(2):  # 6 records, 3 per batch: two batches an epoch
            batch = next(batches)
            for row, seg in zip(
                np.asarray(batch.tokens), np.asarray(batch.segment_ids), strict=True
            ):
                if seg.any():
                    seen.append(ids[tuple(row[seg > 0].tolist())])
        assert sorted(seen) == list(range(6))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled


def tiny_model(vocab_size: int, eos: int, pad: int) -> Decoder:
    config = DecoderConfig(
        architecture="Qwen3ForCausalLM",
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        qk_norm=True,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=pad,
    )
    return Decoder(config, rngs=nnx.Rngs(0))


def demo_nll(model: Decoder, records) -> float:
    """Mean NLL of the demonstrations' mask-1 tokens, record by record (no packing)."""
    total, count = 0.0, 0
    for r in records:
        tokens = np.asarray(r.tokens)[None, :-1]
        targets = np.asarray(r.tokens)[None, 1:]
        logp = np.asarray(model.token_logprobs(tokens, targets))[0]
        mask = np.asarray(r.loss_mask[1:]) > 0
        total -= float(logp[mask].sum())
        count += int(mask.sum())
    return total / count


def test_run_sft__first_loss_is_the_token_mean_nll_and_training_lowers_it(tokenizer, demos):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = tiny_model(len(tokenizer), eos, pad)
    before = demo_nll(model, demos)
    packing = PackingConfig(seq_len=640, overlong="truncate")
    graphdef, state, history = run_sft(
        model, demos, steps=25, batch_size=6, learning_rate=1e-2, packing=packing, seed=0
    )
    # batch_size == len(demos): step 0 sees every record once, so its loss is the token mean.
    np.testing.assert_allclose(history[0]["sft/loss"], before, rtol=1e-4)
    trained = nnx.merge(graphdef, state.params, state.rest)
    after = demo_nll(trained, demos)
    assert after < 0.6 * before, (before, after)
    assert history[-1]["sft/loss"] < history[0]["sft/loss"]
    # The input model is not modified (the warm start returns new weights).
    np.testing.assert_allclose(demo_nll(model, demos), before, rtol=1e-6)
    assert all(np.isfinite(h["sft/grad_norm"]) for h in history)
    jax.clear_caches()


def test_task_stream__epochs_are_permutations_and_resume_by_position():
    stream = TaskStream(5, seed=3)
    first = [o["task_index"] for o in stream.take(7)]
    assert sorted(first[:5]) == list(range(5))  # epoch 0 visits every task once
    rest = [o["task_index"] for o in stream.take(8)]
    assert sorted((first + rest)[5:10]) == list(range(5))
    resumed = TaskStream(5, seed=3, position=7)
    assert [o["task_index"] for o in resumed.take(8)] == rest
    assert TaskStream(None, seed=0).take(2) == [{}, {}]
    with pytest.raises(ValueError):
        TaskStream(0, seed=0)
