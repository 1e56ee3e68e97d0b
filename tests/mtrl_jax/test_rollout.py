"""Tests of the rollout engine against a deterministic fake sampler (and the real one if present).

The fake sampler implements the ``SamplingEngine`` interface: a session's context is everything
sent plus everything sampled; it writes scripted assistant text (tool call, then a final answer
whose correctness depends on the session id, so groups get mixed rewards), and logs the context
it saw at every call so the tests can check it against the training sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import itertools
import re
import time
import zlib

import numpy as np
import pytest

from mtrl_gym import EvalOnlyError, Task, TextEnv, tool
from mtrl_jax.advantages import AdvantageConfig
from mtrl_jax.models.tokenizer import train_tokenizer
from mtrl_jax.rollout import OverlongConfig, RolloutConfig, RolloutEngine
from mtrl_jax.trajectory import TrajectoryWriter
from tests.mtrl_jax import numpy_reference as ref

VERSION = 3
# A ChatML template that drops reasoning (``<think>...</think>``) from earlier assistant turns,
# as Qwen3's does: rendering one turn longer rewrites history, so sequences cannot extend.
REWRITING_TEMPLATE = """\
{%- for message in messages -%}
{%- if message.role == 'assistant' -%}
{{- '<|im_start|>assistant\\n' + message.content.split('</think>')[-1] + '<|im_end|>\\n' -}}
{%- elif message.role == 'tool' -%}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content -}}
{{- '\\n</tool_response><|im_end|>\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""
CORPUS = ['<tool_call>\n{"name": "get_parcel", "arguments": {"parcel_id": "P1"}}\n</tool_call>'] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def rewriting_tokenizer():
    tok = train_tokenizer(CORPUS, vocab_size=320)
    tok.chat_template = REWRITING_TEMPLATE
    return tok


@dataclasses.dataclass
class FakeResult:
    tokens: list[int]
    logprobs: list[float]
    model_logprobs: list[float]
    policy_version: int
    stop_reason: str


def quickstart_script(session_id: str, context: str, think: bool = False) -> str:
    """Turn 1: look the parcel up; turn 2: a final answer, right or wrong by session parity."""
    turn = context.count("<|im_start|>assistant") - 1
    prefix = f"<think>turn {turn}</think>" if think else ""
    if turn == 0:
        parcel = re.search(r"parcel: (P\d+)", context).group(1)
        call = {"name": "get_parcel", "arguments": {"parcel_id": parcel}}
        return f"{prefix}<tool_call>\n{call}\n</tool_call>".replace("'", '"')
    action = "refund" if zlib.crc32(session_id.encode()) % 2 else "sorry"
    return f'{prefix}<final_output>{{"action": "{action}"}}</final_output>'


def toy_script(session_id: str, context: str) -> str:
    if context.count("<|im_start|>assistant") == 1:
        return '<tool_call>\n{"name": "probe", "arguments": {"x": "a"}}\n</tool_call>'
    ok = "true" if zlib.crc32(session_id.encode()) % 2 else "false"
    return f'<final_output>{{"ok": {ok}}}</final_output>'


class FakeSampler:
    """Deterministic stand-in for ``mtrl_jax.sampler.SamplingEngine``."""

    def __init__(self, tokenizer, script, *, one_turn_only=False):
        self.tokenizer, self.script, self.one_turn_only = tokenizer, script, one_turn_only
        self.contexts: dict[str, list[int]] = {}
        self.calls: list[tuple[str, list[int], list[int], list[float]]] = []
        self.ended: set[str] = set()
        self.request_ids: set[int] = set()  # unique within a round: distinct noise per call

    async def generate(
        self,
        session_id,
        new_tokens,
        *,
        max_new_tokens=None,
        stop_token_ids=(),
        stop_strings=(),
        request_id=None,
    ):
        assert session_id not in self.ended
        assert request_id is not None and request_id not in self.request_ids
        self.request_ids.add(request_id)
        context = self.contexts.setdefault(session_id, [])
        if self.one_turn_only and context:  # as the real engine: nothing sampled, no change
            return FakeResult([], [], [], VERSION, "context_full")
        context += new_tokens
        await asyncio.sleep(0.001)  # let other episodes run
        text = self.script(session_id, self.tokenizer.decode(context, skip_special_tokens=False))
        tokens = self.tokenizer.encode(text, add_special_tokens=False) + [stop_token_ids[0]]
        logp = [-0.01 * (i + 1) for i in range(len(tokens))]
        model_logp = [x - 0.5 for x in logp]
        self.calls.append((session_id, list(context), tokens, model_logp))
        context += tokens
        return FakeResult(tokens, logp, model_logp, VERSION, "stop")

    def end_session(self, session_id):
        self.ended.add(session_id)


def make_toy_env_factory(*, eval_only: bool = False, fail_calls: int = 0, slow_s: float = 0.0):
    """A one-task env with a ``probe`` tool whose first ``fail_calls`` calls crash (infra).

    With ``slow_s``, the first call instead sleeps that long (a slow sandbox).
    """
    counter = itertools.count()

    class ToyEnv(TextEnv):
        def tasks(self):
            return [Task(id="t0", prompt="Probe, then answer.", answer={"ok": True})]

        def make_tools(self, task, resources):
            @tool
            async def probe(x: str) -> str:
                """Probes the world.

                Args:
                    x: What to probe.
                """
                call = next(counter)
                if call < fail_calls:
                    raise RuntimeError("sandbox crashed")
                if call == 0 and slow_s:
                    await asyncio.sleep(slow_s)
                return "fine"

            return [probe]

    ToyEnv.eval_only = eval_only
    return ToyEnv


def collect(sampler, tokenizer, env, tasks, group_size=3, **kwargs):
    engine = RolloutEngine(sampler, tokenizer, env, RolloutConfig(group_size=group_size))
    return engine.collect_sync(tasks, **kwargs)


def test_rollout_engine__quickstart_records_line_up_with_tokens(tokenizer):
    sampler = FakeSampler(tokenizer, quickstart_script)
    tasks = [{"task_index": 0}, {"task_index": 1}]
    batch = collect(sampler, tokenizer, "mtrl/SopQuickstart-v0", tasks)
    assert len(batch.records) == 6 and len(batch.trajectories) == 6
    by_sampled = {tuple(c[2]): c[3] for c in sampler.calls}
    for rec in batch.records:
        assert rec.status == "ok" and rec.mode == "extended" and rec.num_turns == 2
        assert rec.reward in (0.0, 1.0) and rec.advantage is not None
        assert rec.loss_mask[0] == 0
        in_turn = np.zeros(len(rec.tokens), bool)
        assistant = [m["content"] for m in rec.messages if m["role"] == "assistant"]
        for (start, end), text in zip(rec.turn_spans, assistant, strict=True):
            in_turn[start:end] = True
            sampled = rec.tokens[start:end].tolist()
            np.testing.assert_array_equal(
                rec.logprobs[start:end], np.float32(by_sampled[tuple(sampled)])
            )
            assert tokenizer.decode(sampled[:-1], skip_special_tokens=False) == text
        np.testing.assert_array_equal(rec.loss_mask, in_turn)
        np.testing.assert_array_equal(rec.policy_version, np.where(in_turn, VERSION, -1))
        assert not rec.logprobs[~in_turn].any() and (rec.logprobs[in_turn] < 0).all()
        # The token sequence decodes to exactly the chat-template rendering of the conversation.
        rendered = _render_with_tools(tokenizer, rec)
        assert tokenizer.decode(rec.tokens.tolist(), skip_special_tokens=False) + "\n" == rendered
    assert {r.group_id for r in batch.records} == {"0:0:0", "0:1:1"}
    assert set(np.unique([r.reward for r in batch.records])) == {0.0, 1.0}
    m = batch.metrics
    assert m["rollout/episodes"] == 6 and m["rollout/excluded_infra"] == 0
    assert m["rollout/turns"] == 2
    assert m["rollout/tokens"] == sum(len(r.tokens) for r in batch.records)
    assert m["rollout/return_mean"] == pytest.approx(np.mean([r.reward for r in batch.records]))
    assert m["rollout/success_rate"] == m["rollout/return_mean"]
    assert len(sampler.ended) == 6  # every session is released


def _render_with_tools(tokenizer, rec):
    import gymnasium as gym

    env = gym.make("mtrl/SopQuickstart-v0")
    _, info = env.reset(options={"task_id": rec.task_id})
    return tokenizer.apply_chat_template(rec.messages, tokenize=False, tools=info["tools"])


def test_rollout_engine__sampler_context_is_prefix_of_training_sequence(tokenizer):
    sampler = FakeSampler(tokenizer, quickstart_script)
    batch = collect(sampler, tokenizer, "mtrl/SopQuickstart-v0", [{"task_index": 2}])
    records = {(r.group_id, r.sample_index): r for r in batch.records}
    assert len(sampler.calls) == 6  # 3 episodes x 2 turns
    for session, context, sampled, _ in sampler.calls:
        group_id, index, sample = session.rsplit("/", 2)
        rec = records[(group_id, int(index))]
        start = rec.sample_starts[int(sample)]
        seen = context + sampled
        assert rec.tokens[start : start + len(seen)].tolist() == seen


def test_rollout_engine__history_rewriting_template_splits_per_turn(tokenizer, rewriting_tokenizer):
    def think_script(session_id, context):
        return quickstart_script(session_id, context, think=True)

    # The project's template never rewrites history: one extended sequence, <think> kept.
    sampler = FakeSampler(tokenizer, think_script)
    extended = collect(sampler, tokenizer, "mtrl/SopQuickstart-v0", [{"task_index": 0}])
    assert {r.mode for r in extended.records} == {"extended"}
    assert len(extended.trajectories) == 3

    sampler = FakeSampler(rewriting_tokenizer, think_script)
    split = collect(sampler, rewriting_tokenizer, "mtrl/SopQuickstart-v0", [{"task_index": 0}])
    assert len(split.trajectories) == 6 and split.metrics["rollout/per_turn_frac"] == 1.0
    for rec in split.records:
        assert rec.mode == "per_turn" and rec.num_samples == rec.num_turns == 2
        learner = rec.to_learner()
        assert [t.advantages for t in learner] == pytest.approx([rec.advantage / 2] * 2)
        # Each sample's sampler session saw exactly that sample's tokens, in order.
        starts = [*rec.sample_starts, len(rec.tokens)]
        for k, traj in enumerate(learner):
            session = f"{rec.group_id}/{rec.sample_index}/{k}"
            (call,) = [c for c in sampler.calls if c[0] == session]
            assert traj.tokens.tolist() == call[1] + call[2]
            assert starts[k + 1] - starts[k] == len(traj.tokens)
    # The second sample's prompt lost the first turn's reasoning (the rewrite that forced a split).
    rec = split.records[0]
    second = rewriting_tokenizer.decode(rec.tokens[rec.sample_starts[1] :].tolist())
    assert "turn 0" not in second.split("<think>turn 1")[0]


def test_rollout_engine__infra_failure_excluded_and_counted(tokenizer):
    sampler = FakeSampler(tokenizer, toy_script)
    env = make_toy_env_factory(fail_calls=1)
    batch = collect(sampler, tokenizer, env, [{"task_id": "t0"}], group_size=4)
    failed = [r for r in batch.records if r.status == "infra_error"]
    kept = [r for r in batch.records if r.status != "infra_error"]
    assert len(failed) == 1 and failed[0].advantage is None
    assert batch.metrics["rollout/excluded_infra"] == 1
    assert batch.metrics["rollout/status/infra_error"] == 1
    assert batch.metrics["rollout/group_size_min"] == 3
    assert len(batch.trajectories) == 3
    # GRPO over the 3 kept episodes only: the failure did not enter the baseline.
    rewards = np.array([r.reward for r in kept])
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    assert [r.advantage for r in kept] == pytest.approx(expected.tolist(), abs=1e-5)
    assert batch.metrics["rollout/return_mean"] == pytest.approx(rewards.mean())


def test_rollout_engine__slow_tool_times_out_alone(tokenizer):
    # One episode's tool hangs for 5 s; the episode limit is 1 s. The other episodes finish at
    # their own pace (not in lockstep with the slow one) and the timed-out one is excluded.
    sampler = FakeSampler(tokenizer, toy_script)
    env = make_toy_env_factory(slow_s=5.0)
    cfg = RolloutConfig(group_size=4, episode_timeout_s=1.0)
    start = time.monotonic()
    batch = RolloutEngine(sampler, tokenizer, env, cfg).collect_sync([{"task_id": "t0"}])
    assert time.monotonic() - start < 3.0
    (slow,) = [r for r in batch.records if r.status == "timeout"]
    fast = [r for r in batch.records if r is not slow]
    assert slow.advantage is None and slow.timings["episode_s"] >= 1.0
    assert all(r.status == "ok" and r.timings["episode_s"] < 0.5 for r in fast)
    assert batch.metrics["rollout/excluded_infra"] == 1 and len(batch.trajectories) == 3


def test_rollout_engine__eval_only_env_refused_for_training(tokenizer, tmp_path):
    env = make_toy_env_factory(eval_only=True)
    with pytest.raises(EvalOnlyError):
        collect(FakeSampler(tokenizer, toy_script), tokenizer, env, [{"task_id": "t0"}])
    batch = collect(
        FakeSampler(tokenizer, toy_script), tokenizer, env, [{"task_id": "t0"}], evaluation=True
    )
    assert batch.trajectories == [] and all(r.eval_only for r in batch.records)
    with TrajectoryWriter(tmp_path / "train.jsonl") as writer, pytest.raises(EvalOnlyError):
        writer.write(batch.records[0])
    with TrajectoryWriter(tmp_path / "eval.jsonl", evaluation_output=True) as writer:
        writer.write(batch.records[0])


def test_rollout_engine__context_full_truncates_without_unseen_tokens(tokenizer):
    sampler = FakeSampler(tokenizer, quickstart_script, one_turn_only=True)
    batch = collect(sampler, tokenizer, "mtrl/SopQuickstart-v0", [{"task_index": 0}])
    for rec in batch.records:
        assert rec.status == "truncated" and rec.reward == 0.0 and rec.num_turns == 1
        assert rec.advantage == 0.0  # included (the agent's own length), all-equal group
        session = f"{rec.group_id}/{rec.sample_index}/0"
        assert rec.tokens.tolist() == sampler.contexts[session]  # only tokens the sampler saw
    assert batch.metrics["rollout/excluded_infra"] == 0


class SpySampler:
    """Wraps a sampler; records ``context(session)`` after every call."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []

    async def generate(self, session_id, new_tokens, **kwargs):
        result = await self.engine.generate(session_id, new_tokens, **kwargs)
        self.seen.append((session_id, self.engine.context(session_id)))
        return result

    def end_session(self, session_id):
        self.engine.end_session(session_id)


@pytest.mark.skipif(
    importlib.util.find_spec("mtrl_jax.sampler") is None, reason="mtrl_jax.sampler not landed"
)
def test_rollout_engine__real_sampling_engine_context_is_prefix(tmp_path):
    import gymnasium as gym
    import jax

    from mtrl_jax.models import build_default, load_pretrained, load_tokenizer
    from mtrl_jax.sampler import SamplerConfig, SamplingEngine

    folder = build_default(tmp_path / "tiny")
    tok = load_tokenizer(folder)
    engine = SamplingEngine(
        load_pretrained(folder),
        num_slots=2,
        max_len=2048,
        tokenizer=tok,
        config=SamplerConfig(temperature=1.0, prefill_buckets=(64, 256)),
        key=jax.random.key(0),
    )
    spy = SpySampler(engine)
    cfg = RolloutConfig(group_size=2, max_new_tokens=8)

    def make_env():
        return gym.make("mtrl/SopQuickstart-v0", max_turns=3)

    batch = RolloutEngine(spy, tok, make_env, cfg).collect_sync([{"task_index": 0}])
    records = {(r.group_id, r.sample_index): r for r in batch.records}
    assert len(spy.seen) >= 2
    for session, context in spy.seen:
        group_id, index, sample = session.rsplit("/", 2)
        rec = records[(group_id, int(index))]
        start = rec.sample_starts[int(sample)]
        assert rec.tokens[start : start + len(context)].tolist() == context
    for rec in batch.records:
        assert rec.mode == "extended" and rec.num_turns >= 1
        spans = np.concatenate([np.arange(s, e) for s, e in rec.turn_spans])
        assert (rec.loss_mask[spans] == 1).all() and rec.loss_mask.sum() == len(spans)
        assert (rec.logprobs[spans] <= 0).all() and (rec.policy_version[spans] == 0).all()


def length_script(session_id: str, context: str) -> str:
    """Turn 1 probes with an argument that grows with the sample index (lengths differ); turn 2
    answers, correctly for every sample of the round's first task and for odd samples after."""
    group_id, index = session_id.split("/")[:2]
    if context.count("<|im_start|>assistant") == 1:
        x = "a" * (1 + 4 * int(index))
        return f'<tool_call>\n{{"name": "probe", "arguments": {{"x": "{x}"}}}}\n</tool_call>'
    ok = "true" if group_id.startswith("0:0:") or int(index) % 2 else "false"
    return f'<final_output>{{"ok": {ok}}}</final_output>'


def collect_two_groups(tokenizer, **cfg):
    """Two groups of 4 on the toy task: group ``0:0:t0`` all correct, ``0:1:t0`` half."""
    engine = RolloutEngine(
        FakeSampler(tokenizer, length_script),
        tokenizer,
        make_toy_env_factory(),
        RolloutConfig(group_size=4, **cfg),
    )
    batch = engine.collect_sync([{"task_id": "t0"}, {"task_id": "t0"}])
    groups = {}
    for rec in batch.records:
        groups.setdefault(rec.group_id, []).append(rec)
    assert [[r.reward for r in groups[g]] for g in ("0:0:t0", "0:1:t0")] == [
        [1.0] * 4,
        [0.0, 1.0, 0.0, 1.0],
    ]
    return batch, groups


def test_rollout_engine__filter_groups_drops_identical_groups(tokenizer):
    plain, _ = collect_two_groups(tokenizer)
    assert len(plain.trajectories) == 8 and plain.metrics["advantage/filtered_groups"] == 0
    batch, groups = collect_two_groups(tokenizer, advantage=AdvantageConfig(filter_groups=True))
    assert batch.metrics["advantage/filtered_groups"] == 1
    assert batch.metrics["advantage/groups"] == 1 and batch.metrics["advantage/samples"] == 4
    assert batch.metrics["rollout/learner_sequences"] == len(batch.trajectories) == 4
    assert batch.metrics["rollout/episodes"] == 8  # the records of the dropped group stay
    assert [r.advantage for r in groups["0:0:t0"]] == [0.0] * 4
    kept = [r.advantage for r in groups["0:1:t0"]]
    assert kept == pytest.approx(ref.grpo([0.0, 1.0, 0.0, 1.0], True), abs=1e-5)
    assert sorted(t.advantages for t in batch.trajectories) == pytest.approx(sorted(kept))


def test_rollout_engine__overlong_penalty_shapes_the_advantage_rewards(tokenizer):
    _, plain = collect_two_groups(tokenizer)
    lengths = {g: [int(r.loss_mask.sum()) for r in recs] for g, recs in plain.items()}
    assert lengths["0:0:t0"] == sorted(set(lengths["0:0:t0"]))  # longer with the index
    top = max(max(v) for v in lengths.values())
    cfg = OverlongConfig(mode="penalty", max_tokens=top, buffer=top - min(lengths["0:0:t0"]))
    batch, groups = collect_two_groups(
        tokenizer, overlong=cfg, advantage=AdvantageConfig(filter_groups=True)
    )
    penalties = []
    for recs in groups.values():
        shaped = []
        for rec in recs:
            p = ref.overlong_penalty(int(rec.loss_mask.sum()), cfg.max_tokens, cfg.buffer)
            shaped.append(rec.reward + p)
            penalties.append(p)
        expected = ref.grpo(shaped, True)
        assert [r.advantage for r in recs] == pytest.approx(expected, abs=1e-4)
    # All correct, yet no longer identical: the shorter answers now win, and nothing is dropped.
    first = [r.advantage for r in groups["0:0:t0"]]
    assert first[0] > 0 > first[-1] and batch.metrics["advantage/filtered_groups"] == 0
    assert [r.reward for r in groups["0:0:t0"]] == [1.0] * 4  # records keep the env's reward
    assert batch.metrics["rollout/return_mean"] == pytest.approx(0.75)
    assert batch.metrics["rollout/overlong_penalty_mean"] == pytest.approx(np.mean(penalties))
    assert batch.metrics["rollout/overlong_penalized"] == sum(p < 0 for p in penalties) >= 3


def test_rollout_engine__overlong_mask_keeps_cut_episodes_out_of_the_loss(tokenizer):
    _, plain = collect_two_groups(tokenizer)
    limit = int(plain["0:1:t0"][3].loss_mask.sum())  # sample 3 is the longest of each group
    batch, groups = collect_two_groups(
        tokenizer, overlong=OverlongConfig(mode="mask", max_tokens=limit)
    )
    cut = [r for r in batch.records if r.loss_mask.sum() >= limit]
    assert len(cut) >= 2 and batch.metrics["rollout/overlong_masked"] == len(cut)
    assert len(batch.trajectories) == 8 - len(cut)
    # Masked episodes still count in their group's baseline (only their loss is masked).
    expected = ref.grpo([0.0, 1.0, 0.0, 1.0], True)
    assert [r.advantage for r in groups["0:1:t0"]] == pytest.approx(expected, abs=1e-5)
    kept = sorted(r.advantage for r in batch.records if r.loss_mask.sum() < limit)
    assert sorted(float(t.advantages) for t in batch.trajectories) == pytest.approx(kept)


def test_rollout_engine__filter_groups_can_leave_nothing_to_train(tokenizer):
    # Every episode is cut after one turn with reward 0: one identical group, dropped whole.
    sampler = FakeSampler(tokenizer, quickstart_script, one_turn_only=True)
    cfg = RolloutConfig(group_size=3, advantage=AdvantageConfig(filter_groups=True))
    engine = RolloutEngine(sampler, tokenizer, "mtrl/SopQuickstart-v0", cfg)
    batch = engine.collect_sync([{"task_index": 0}])
    assert batch.trajectories == [] and batch.metrics["rollout/learner_sequences"] == 0
    assert batch.metrics["advantage/filtered_groups"] == 1
    assert batch.metrics["advantage/groups"] == 0
    assert [r.advantage for r in batch.records] == [0.0] * 3


def test_rollout_engine__play_with_a_task_offset_continues_the_round(tokenizer):
    # A refill plays more tasks of the same round after the first ones: scored together they
    # are the round collect would have played with all the tasks at once (same group ids,
    # seeds, sampler streams, advantages).
    whole, _ = collect_two_groups(tokenizer, advantage=AdvantageConfig(filter_groups=True))
    engine = RolloutEngine(
        FakeSampler(tokenizer, length_script),
        tokenizer,
        make_toy_env_factory(),
        RolloutConfig(group_size=4, advantage=AdvantageConfig(filter_groups=True)),
    )
    first = asyncio.run(engine.play([{"task_id": "t0"}], step=0))
    assert engine.score(first).metrics["advantage/groups"] == 0  # all correct: dropped
    more = asyncio.run(engine.play([{"task_id": "t0"}], step=0, task_offset=1))
    assert {r.group_id for r in more} == {"0:1:t0"}
    batch = engine.score(first + more)
    key = lambda r: (r.group_id, r.sample_index)  # noqa: E731
    for a, b in zip(sorted(whole.records, key=key), sorted(batch.records, key=key), strict=True):
        assert key(a) == key(b) and a.tokens.tolist() == b.tokens.tolist()
        assert a.advantage == b.advantage
    assert batch.metrics["advantage/groups"] == 1 and len(batch.trajectories) == 4
