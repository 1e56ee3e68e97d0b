"""Demonstrations for supervised warm starts: scripted (oracle) episodes as trajectory records.

:func:`oracle_records` plays an environment's scripted policy (``TextEnv.oracle_policy``) and
records each episode exactly as a rollout would: the chat template renders the environment's
messages (loss mask 0), and each scripted assistant message is encoded once and followed by the
end-of-turn token (loss mask 1), through the same
:class:`~mtrl_jax.rollout.sequence.EpisodeSequence` the rollout uses. Supervised training on
these records therefore teaches the model the very token layout it will be sampled in; nothing
about the layout is specific to demonstrations.

Demonstration tokens were not sampled, so their log-probs are 0 and their policy version is -1
(the learner's ``nll`` objective ignores both). Records of evaluation-only environments are
refused (:func:`mtrl_gym.ensure_trainable`): benchmark data never becomes training data.

``answers="shuffled"`` keeps the oracle's tool calls but gives each task another task's final
answer: a warm start that teaches the protocol and leaves the decision for RL to learn.
``answers="confused"`` swaps pairs of answers: a systematically wrong decision to unlearn.
``recap=True`` has the final message restate the tool results before the answer.

Non-goals: demonstrations from people or other models (record them as trajectories and use
``read_trajectories``), filtering by quality (the oracle solves every task; this is checked).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from mtrl_gym import ensure_trainable
from mtrl_jax.rollout.sequence import ChatTokenizer, EpisodeSequence
from mtrl_jax.sampler.config import SampleResult
from mtrl_jax.trajectory import TrajectoryRecord

log = logging.getLogger(__name__)


def _scripted_turn(tokenizer: ChatTokenizer, text: str, stop_token_id: int) -> SampleResult:
    """The scripted text as if sampled: its encoding plus the end-of-turn token."""
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)] + [stop_token_id]
    zeros = [0.0] * len(ids)
    return SampleResult(tokens=ids, logprobs=zeros, model_logprobs=zeros, policy_version=-1)


def oracle_records(
    make_env: Callable[[], gym.Env],
    tasks: Iterable[dict[str, Any]],
    tokenizer: ChatTokenizer,
    *,
    stop_token_id: int,
    max_steps: int = 64,
    seed: int = 0,
    answers: Literal["oracle", "shuffled", "confused"] = "oracle",
    altered_fraction: float = 1.0,
    recap: bool = False,
    confused_pairs: Sequence[Sequence[str]] | None = None,
) -> list[TrajectoryRecord]:
    """Plays the environment's oracle on each task and records the episodes.

    Args:
        make_env: Zero-argument environment factory (``gym.make`` partial).
        tasks: Reset options per task, e.g. ``{"task_index": 3}``.
        tokenizer: The model's tokenizer (chat template, ``encode``).
        stop_token_id: The end-of-turn token appended to each scripted message (the sampler's
            stop token, e.g. ``<|im_end|>``).
        max_steps: Safety bound on turns per episode.
        seed: Reset seed of every episode (environments are deterministic given the task);
            also seeds which answers ``shuffled`` and ``confused`` alter, and how.
        answers: ``oracle`` keeps the oracle's final answers. ``shuffled`` keeps its tool calls
            but gives each task the final answer the oracle gave another task (a seeded
            permutation over ``tasks``): the answers keep their overall distribution but no
            longer depend on what the tools returned. A warm start on these learns the
            protocol (format, which tools, copying ids) and not the decision, which RL then
            has to learn from the reward. Such records are scored as played (mostly reward 0).
            ``confused`` stands for a demonstrator that mixes up rules of the procedure: a
            seeded pair of the distinct final answers (or the ``confused_pairs``) is swapped in
            each picked task whose oracle answer is one of them (picked tasks with another
            answer keep theirs). The decision then still follows the tool results, but for
            those cases wrongly ``altered_fraction`` of the time and always the same way: a
            warm start that masters the protocol and has a mistake RL must unlearn from the
            reward.
        altered_fraction: the share of tasks (a seeded subset) whose answers ``shuffled``
            or ``confused`` alter; the others keep the oracle's.
        recap: the final message first restates what the tools returned (``Found: status
            late, user U31, tier gold.``, see :func:`recap_text`), then answers. The facts the
            decision rests on then sit just before the answer, in the agent's own words.
        confused_pairs: with ``confused``: the answer values mixed up, e.g. ``[("refund",
            "credit"), ("sorry", "wait")]``; a final answer with a top-level field equal to one
            of a pair gets the other instead. None: one seeded pair of whole answers.

    Returns:
        One record per task, with ``reward``, ``eval`` and ``status`` from the environment.

    Raises:
        EvalOnlyError: the environment is evaluation-only.
        ValueError: the environment has no oracle, or the oracle failed a task (a bug in the
            environment: demonstrations must be correct).
    """
    if answers not in ("oracle", "shuffled", "confused"):
        raise ValueError(f"answers must be 'oracle', 'shuffled' or 'confused', got {answers!r}")
    if not 0.0 <= altered_fraction <= 1.0:
        raise ValueError(f"altered_fraction must be in [0, 1], got {altered_fraction}")
    tasks = [dict(options) for options in tasks]
    env = make_env()
    try:
        ensure_trainable(env)
        play = dict(tokenizer=tokenizer, stop_token_id=stop_token_id, max_steps=max_steps)
        play |= dict(seed=seed, recap=recap)
        records = [_play(env, o, **play) for o in tasks]
        if answers != "oracle":
            rng = np.random.default_rng(seed)
            picked = rng.permutation(len(records))[: round(altered_fraction * len(records))]
            finals = [_final_answer(records[i]) for i in picked]
            if answers == "shuffled":
                finals = [finals[j] for j in rng.permutation(len(finals))]
            else:
                distinct = sorted({_final_answer(r) for r in records})
                if confused_pairs is None:
                    swap = _swapped_pair(distinct, rng)
                else:
                    swap = _named_swaps(distinct, confused_pairs)
                finals = [swap.get(f, f) for f in finals]
            for i, final in zip(picked, finals, strict=True):
                if final != _final_answer(records[i]):  # an unchanged answer needs no replay
                    records[i] = _play(env, tasks[i], **play, final=final)
    finally:
        env.close()
    return records


def _swapped_pair(values: list[str], rng: np.random.Generator) -> dict[str, str]:
    """A seeded pair of ``values`` mapped onto each other (needs two or more values)."""
    if len(values) < 2:
        raise ValueError("confused answers need two or more distinct oracle answers")
    a, b = (values[i] for i in rng.choice(len(values), size=2, replace=False))
    return {a: b, b: a}


def _named_swaps(finals: list[str], pairs: Sequence[Sequence[str]]) -> dict[str, str]:
    """Each final answer (JSON text) with a field valued as one of a pair -> the other value.

    A value no final answer has swaps nothing (a short run's few demonstrations may lack it);
    it is logged, and none of the values found at all is an error.

    Raises:
        ValueError: a pair is not two distinct values, a value is named twice, or no final
            answer has any of the values (a typo would otherwise silently swap nothing).
    """
    partner: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"confused_pairs: each pair needs two distinct values, got {pair!r}")
        for a, b in (pair, pair[::-1]):
            if a in partner:
                raise ValueError(f"confused_pairs: {a!r} is named in two pairs")
            partner[a] = b
    # A swapped answer the oracle also gives keeps the oracle's exact text (spacing, key order).
    texts = {json.dumps(json.loads(f), sort_keys=True): f for f in finals}
    swap, seen = {}, set()
    for final in finals:
        value = json.loads(final)
        if not isinstance(value, dict):
            continue
        fields = {k: partner[v] for k, v in value.items() if isinstance(v, str) and v in partner}
        seen |= {value[k] for k in fields}
        if fields:
            swapped = value | fields
            swap[final] = texts.get(json.dumps(swapped, sort_keys=True), json.dumps(swapped))
    if missing := sorted(set(partner) - seen):
        known = sorted({v for f in finals for v in _string_values(f)})
        message = f"confused_pairs: no final answer has {missing}; answers have {known}"
        if not seen:
            raise ValueError(message)
        log.warning(message)
    return swap


def _string_values(final: str) -> list[str]:
    value = json.loads(final)
    return [v for v in value.values() if isinstance(v, str)] if isinstance(value, dict) else []


_FINAL_RE = re.compile(r"<final_output>(.*?)</final_output>", re.DOTALL)


def _final_answer(record: TrajectoryRecord) -> str:
    """The JSON text of the record's final answer (as the oracle wrote it)."""
    for msg in reversed(record.messages):
        found = _FINAL_RE.search(msg.get("content") or "") if msg["role"] == "assistant" else None
        if found:
            return found.group(1)
    raise ValueError(f"the oracle gave no final answer on task {record.task_id}")


def recap_text(tool_calls: Iterable[dict[str, Any]]) -> str:
    """One sentence restating the fields of every JSON-object tool result, in call order.

    >>> calls = [{"result": '{"status": "late", "user": "U31"}'}, {"result": '{"tier": "gold"}'}]
    >>> recap_text(calls)
    'Found: status late, user U31, tier gold.'

    Failed calls and results that are not JSON objects are left out; with nothing to restate,
    the text is empty.
    """
    facts = []
    for call in tool_calls:
        if call.get("error") is not None or not isinstance(call.get("result"), str):
            continue
        try:
            result = json.loads(call["result"])
        except ValueError:
            continue
        if isinstance(result, dict):
            facts += [
                f"{k} {v if isinstance(v, str) else json.dumps(v)}" for k, v in result.items()
            ]
    return f"Found: {', '.join(facts)}." if facts else ""


def _play(
    env: gym.Env,
    options: dict[str, Any],
    *,
    tokenizer: ChatTokenizer,
    stop_token_id: int,
    max_steps: int,
    seed: int,
    recap: bool,
    final: str | None = None,
) -> TrajectoryRecord:
    """One scripted episode; ``final`` replaces the JSON of the oracle's final answer."""
    observation, info = env.reset(seed=seed, options=options)
    task_id = info.get("task_id")
    policy = env.unwrapped.oracle_policy()  # type: ignore[attr-defined]
    if policy is None:
        raise ValueError(f"{env.spec.id if env.spec else env} has no oracle policy")
    seq = EpisodeSequence(tokenizer, stop_token_ids=[stop_token_id], tools=info.get("tools"))
    tool_calls: list[dict[str, Any]] = []
    reward, done, steps = 0.0, False, 0
    while not done:
        if steps == max_steps:
            raise ValueError(f"oracle exceeded {max_steps} turns on {task_id}")
        seq.add_messages(info.get("messages", []))
        action = policy(observation, info)
        if final is not None:
            action = _FINAL_RE.sub(lambda _: f"<final_output>{final}</final_output>", action)
        if recap and _FINAL_RE.search(action) and (said := recap_text(tool_calls)):
            action = f"{said}\n{action}"
        text = seq.add_sample(_scripted_turn(tokenizer, action, stop_token_id))
        observation, reward, terminated, truncated, info = env.step(text)
        tool_calls += info.get("tool_calls", [])
        done, steps = terminated or truncated, steps + 1
    evaluation = info.get("eval") or {}
    if final is None and not evaluation.get("success", reward > 0):
        raise ValueError(f"the oracle failed task {task_id}: {evaluation}")
    arrays = seq.arrays()
    return TrajectoryRecord(
        task_id=task_id,
        group_id=f"demo:{task_id}",
        messages=[*seq.messages, *(dict(m) for m in info.get("messages", []))],
        reward=float(reward),
        eval=evaluation,
        status=str(info.get("status", "ok")),
        final_answer=info.get("final_answer"),
        tool_calls=tool_calls,
        **arrays,
    )
