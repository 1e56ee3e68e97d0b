"""The environment contract: :class:`TextEnv`, a multi-turn text ``gymnasium.Env[str, str]``.

The action is the raw assistant text. The observation is the text of the new environment messages
since the last action: the instructions at reset, then tool results and error feedback. ``info``
carries the structured view the learner renders with a chat template:

- at reset: ``tools`` (OpenAI function schemas), ``tools_prompt`` (the tool-call format's
  description of the tools, for formats a chat template does not know), ``messages`` (the new
  system/user messages), ``task_id``;
- on every step: ``messages`` (new tool/user messages), ``tool_calls`` (``id``, ``name``,
  ``arguments``, ``result``, ``error``), ``format_error``, ``turn`` and running ``counts``
  (``tool_calls``, ``invalid_tool_calls``, ``format_errors``, ``user_turns``); after a user turn,
  ``user`` (``done`` and the simulator's ``log``, or the ``error`` that ended the episode);
- when the episode ends: ``final_answer``, ``eval`` (the external evaluation), ``status`` and
  ``ended_by`` (:class:`~mtrl_gym.types.EndedBy`).

``info`` is deterministic, so Gymnasium's determinism checks pass; timings go under
``diagnostics`` only when asked for. An episode ends with ``terminated`` when the agent commits to
a final answer, calls a tool that ends the episode (:class:`~mtrl_gym.types.EndEpisode`), or the
user ends the conversation, all with status ``ok`` and scored; and ``truncated`` on max turns, a
character or token budget, a wall-clock limit, or an infrastructure failure (status
``infra_error`` / ``timeout``, which the trainer excludes): a tool that fails other than with
``ToolError``, a user simulator that fails, or an evaluator or reward function that raises
``ToolInfraError`` while grading the final answer.

**Users.** With a user simulator (``user=``, see :mod:`mtrl_gym.users`), a message that holds
neither a tool call nor a final answer goes to the user, whose reply is the next observation (a
``user`` message); without one, such a message gets the ``NO_CALL_FEEDBACK`` format error. The
task's prompt is the user's opening message. Anything the agent's text causes stays the agent's
mistake: a message that is not valid Unicode text gets format-error feedback and never reaches the
user; only the simulator's own failure (an endpoint down) is ``infra_error``.

Subclasses provide tasks and tools; see :meth:`TextEnv.tasks` and :meth:`TextEnv.make_tools`.
Non-goals: tokenisation and chat templates (the learner's side), and tool isolation (``sandbox``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from mtrl_gym.evaluation import (
    AnswerExtractor,
    EpisodeSummary,
    Evaluator,
    ExactMatchEvaluator,
    ExactMatchReward,
    FinalAnswer,
    RewardFn,
    TagAnswerExtractor,
)
from mtrl_gym.formats import ToolCallFormat, get_format
from mtrl_gym.invocation import InfraFailure, Outcome, arun_call, run_call
from mtrl_gym.resources import EpisodeResources
from mtrl_gym.spaces import TextSpace
from mtrl_gym.tools import Tool, ToolError, ToolInfraError
from mtrl_gym.types import (
    JSON,
    EndedBy,
    EndEpisode,
    ParsedCall,
    Role,
    Status,
    Task,
    ToolCallRecord,
    copy_json,
    escape_surrogates,
    message,
    text_problem,
)
from mtrl_gym.users import UserConversation, UserReply, UserSimulator, aask_user, ask_user

# Under ``astep`` the final grading (``grade_episode``, the evaluator, the reward) runs here, off
# the event loop, so a slow grader (hidden tests in a sandbox, a gold query) delays only its own
# episode. A pool of its own so that graders and tool calls never wait for each other's threads.
_GRADE_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="mtrl-grade")

NO_CALL_FEEDBACK = (
    "Error: your message contained neither a tool call nor a final answer. Call a tool as "
    "described, or give your final answer as <final_output>{{...}}</final_output>."
)


class EvalOnlyError(ValueError):
    """An evaluation-only environment was handed to something that trains."""


def ensure_trainable(env: gym.Env) -> None:
    """Raises :class:`EvalOnlyError` if ``env`` is marked evaluation-only.

    Every training entry point (trainer, SFT data builder, trajectory writer) calls this before it
    reads an episode, so benchmark data licensed for evaluation only cannot become training data
    by accident.
    """
    inner = env.unwrapped
    if getattr(inner, "eval_only", False):
        reason = (
            getattr(inner, "eval_only_reason", "") or "its data is licensed for evaluation only"
        )
        raise EvalOnlyError(f"{inner} is evaluation-only and cannot be used for training: {reason}")


@dataclass
class _Ending:
    """An episode that has ended and waits for its grade.

    ``step`` grades it on the caller's thread; ``astep`` on a grading thread, off the event loop.
    """

    observation: str
    info: dict[str, Any]
    summary: EpisodeSummary
    terminated: bool


StepResult = tuple[str, float, bool, bool, dict[str, Any]]


@dataclass
class _Plan:
    """One call of a step, either rejected up front (``error``) or ready to run (``tool``)."""

    record: ToolCallRecord
    tool: Tool | None = None


class _AskUser:
    """Internal: the step's message goes to the user simulator (see :meth:`TextEnv.step`)."""


_ASK_USER = _AskUser()


class TextEnv(gym.Env[str, str]):
    """Base class for multi-turn text environments with tools.

    Subclasses implement :meth:`tasks` (or override :meth:`load_task`) and :meth:`make_tools`, and
    may override :meth:`system_prompt`, :meth:`oracle_policy` and the reward / evaluator.

    Grading runs when the episode ends: the evaluator first, then the reward function (skipped,
    reward 0.0, for an infrastructure failure or a timeout). If either raises
    :class:`~mtrl_gym.tools.ToolInfraError` (``SandboxInfraError`` is one), the episode ends as an
    infrastructure failure, exactly as when a tool's infrastructure fails: status ``infra_error``,
    ``terminated=False``, ``truncated=True``, reward 0.0, ``info["final_answer"]`` as extracted,
    and ``info["eval"] == {"success": False, "status": "infra_error", "error": "<Type>: <msg>"}``
    (``<Type>`` the exception's class name). Any other exception from the evaluator or the reward
    function is a bug and propagates. Grading sees how the episode ended
    (``EpisodeSummary.ended_by``) and the whole transcript, user turns included.

    Args:
        tool_format: Name or instance of the tool-call format (``hermes``, ``json``, ``react``).
        max_turns: Assistant turns before the episode is truncated.
        max_tool_calls_per_turn: Calls beyond this in one message are rejected with an error.
        max_action_chars: Size of the action space; longer actions are rejected by the space.
        max_episode_chars: Budget on all text exchanged (actions and observations), or ``None``.
        max_episode_tokens: Budget measured by ``token_counter``, or ``None``.
        token_counter: Counts tokens of a text (e.g. a tokenizer's ``len(encode(text))``).
        max_result_chars: Tool results longer than this are cut, with a note to the agent.
        time_limit_s: Wall-clock limit of the episode, or ``None``.
        tool_timeout_s: Default wall-clock limit of one tool call, or ``None``.
        answer_extractor: Finds the final answer; default: last ``<final_output>{json}``.
        reward_fn: Reward of a finished episode; default: strict exact match. May raise
            ``ToolInfraError`` (see above).
        evaluator: External evaluation of a finished episode; default: strict exact match. May
            raise ``ToolInfraError`` (see above).
        user: The user simulator (:class:`~mtrl_gym.users.UserSimulator`), or ``None`` for an
            environment without a user. It starts a conversation at every reset with a generator
            drawn from ``np_random``, so a seed fixes the user's randomness too.
        answer_from_last_message: When the user ends the conversation, the agent's last message
            to it is the final answer (its text as a ``str`` value); otherwise there is none.
        diagnostics: Add non-deterministic timings under ``info["diagnostics"]``.
        render_mode: ``None`` or ``"ansi"`` (the transcript as text).
    """

    # Text renders have no frame rate; Gymnasium's checker asks for one to be declared.
    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 1}
    # Environments built on evaluation-only data (e.g. benchmarks whose licence forbids training)
    # set this; trainers call :func:`ensure_trainable`, and episode results carry the flag.
    eval_only: bool = False
    eval_only_reason: str = ""

    def __init__(
        self,
        *,
        tool_format: str | ToolCallFormat = "hermes",
        max_turns: int = 16,
        max_tool_calls_per_turn: int = 8,
        max_action_chars: int = 65_536,
        max_episode_chars: int | None = None,
        max_episode_tokens: int | None = None,
        token_counter: Callable[[str], int] | None = None,
        max_result_chars: int = 16_384,
        time_limit_s: float | None = None,
        tool_timeout_s: float | None = None,
        answer_extractor: AnswerExtractor | None = None,
        reward_fn: RewardFn | None = None,
        evaluator: Evaluator | None = None,
        user: UserSimulator | None = None,
        answer_from_last_message: bool = False,
        diagnostics: bool = False,
        render_mode: str | None = None,
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if max_tool_calls_per_turn < 1:
            raise ValueError(f"max_tool_calls_per_turn must be >= 1, got {max_tool_calls_per_turn}")
        if max_episode_tokens is not None and token_counter is None:
            raise ValueError("max_episode_tokens needs a token_counter")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.format = get_format(tool_format)
        self.max_turns = max_turns
        self.max_tool_calls_per_turn = max_tool_calls_per_turn
        self.max_episode_chars = max_episode_chars
        self.max_episode_tokens = max_episode_tokens
        self.token_counter = token_counter
        self.max_result_chars = max_result_chars
        self.time_limit_s = time_limit_s
        self.tool_timeout_s = tool_timeout_s
        self.answer_extractor = answer_extractor or TagAnswerExtractor()
        self.reward_fn = reward_fn or ExactMatchReward()
        self.evaluator = evaluator or ExactMatchEvaluator()
        self.user = user
        self.answer_from_last_message = answer_from_last_message
        self.diagnostics = diagnostics
        self.render_mode = render_mode
        self.action_space = TextSpace(max_action_chars)
        self.observation_space = TextSpace()
        self.task: Task | None = None
        self.transcript: list[dict[str, JSON]] = []
        self._resources: EpisodeResources | None = None
        self._tools: dict[str, Tool] = {}
        self._advertised: tuple[Tool, ...] = ()
        self._conversation: UserConversation | None = None
        # What the user sees: its opening message, the agent's messages to it and its replies.
        self._dialogue: list[dict[str, JSON]] = []
        self._done = True

    # ---- what subclasses provide ----------------------------------------------------------------

    def tasks(self) -> Sequence[Task]:
        """All tasks of this environment (used by the default :meth:`load_task`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement tasks() or load_task()")

    def load_task(self, options: Mapping[str, Any] | None) -> Task:
        """Chooses the episode's task: ``options["task_id"]``, ``options["task_index"]`` or random.

        Random choice uses ``self.np_random``, so ``reset(seed=s)`` always gives the same task.
        """
        tasks = self.tasks()
        if not tasks:
            raise ValueError(f"{type(self).__name__} has no tasks")
        options = options or {}
        if "task_id" in options:
            for t in tasks:
                if t.id == options["task_id"]:
                    return t
            raise ValueError(f"unknown task_id {options['task_id']!r} in {type(self).__name__}")
        if "task_index" in options:
            index = options["task_index"]
            if not isinstance(index, int) or not 0 <= index < len(tasks):
                raise ValueError(f"task_index must be an int in [0, {len(tasks)}), got {index!r}")
            return tasks[index]
        return tasks[int(self.np_random.integers(len(tasks)))]

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """The tools for this episode; allocate per-episode state through ``resources``."""
        return ()

    def grade_episode(self, episode: EpisodeSummary) -> Any:
        """Expensive grading shared by the reward and the evaluator (``episode.grade``).

        Runs once per episode, before both. Environments that execute the answer (hidden tests,
        gold queries) do it here; raising :class:`~mtrl_gym.ToolInfraError` ends the episode as
        ``infra_error``. The default grades nothing.
        """
        return None

    def unlisted_tools(self, task: Task) -> Sequence[Tool]:
        """Tools the agent may call but that are not advertised (not in prompt or ``tools``).

        Benchmarks replaying a production harness need these: the harness implemented a tool
        that its prompt never listed.
        """
        return ()

    def unknown_tool_error(self, name: str | None) -> str:
        """The error text for a call to a tool that does not exist."""
        known = ", ".join(sorted(t.name for t in self._advertised)) or "none"
        return f"unknown tool {name!r}; available tools: {known}"

    def system_prompt(self, task: Task) -> str | None:
        """The system message; default: the task's own ``system`` text."""
        return task.system

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str] | None:
        """A scripted policy that solves the current task, if the environment has one."""
        return None

    # ---- Gymnasium API -------------------------------------------------------------------------

    @property
    def tools(self) -> dict[str, Tool]:
        """The current episode's tools by name."""
        return dict(self._tools)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Starts an episode: releases the previous one's resources, picks a task, makes tools."""
        super().reset(seed=seed)
        self._release_resources()
        self.task = self.load_task(options)
        self._resources = EpisodeResources(self.np_random)
        tools = list(self.make_tools(self.task, self._resources))
        self._advertised = tuple(tools)
        self._tools = {}
        for t in [*tools, *self.unlisted_tools(self.task)]:
            if t.name in self._tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self._tools[t.name] = t
        self._conversation, self._dialogue = None, []
        if self.user is not None:
            # Drawn only when there is a user, so environments without one keep their streams.
            user_rng = np.random.default_rng(int(self.np_random.integers(2**63)))
            self._conversation = self.user.start(self.task, user_rng)
            self._dialogue = [message(Role.USER, self.task.prompt)]
        self._turn = 0
        self._chars = 0
        self._tokens = 0
        self._counts = {"tool_calls": 0, "invalid_tool_calls": 0, "format_errors": 0}
        self._counts["user_turns"] = 0
        self._all_calls: list[dict[str, JSON]] = []
        self._start = time.monotonic()
        self._done = False

        schemas = [t.schema for t in tools]
        messages = []
        system = self.system_prompt(self.task)
        if system:
            messages.append(message(Role.SYSTEM, system))
        messages.append(message(Role.USER, self.task.prompt))
        self.transcript = [dict(m) for m in messages]
        tools_prompt = self.format.tools_prompt(schemas) if schemas else ""
        parts = [system or "", tools_prompt, self.task.prompt]
        observation = "\n\n".join(p for p in parts if p)
        self._consume_budget(observation)
        info: dict[str, Any] = {
            "task_id": self.task.id,
            "tools": schemas,
            "tools_prompt": tools_prompt,
            "messages": messages,
        }
        if self.diagnostics:
            info["diagnostics"] = {"elapsed_s": 0.0}
        return observation, info

    def step(self, action: str) -> StepResult:
        """Applies one assistant message (an answer, tool calls, or a message to the user)."""
        plans, early = self._begin_step(action)
        if isinstance(early, _AskUser):
            assert self._conversation is not None
            early = self._after_user(ask_user(self._conversation, self._dialogue))
        elif early is None:
            outcomes: list[Outcome] = []
            for plan in plans:
                outcomes.append(self._invoke(plan))
                if isinstance(outcomes[-1], InfraFailure | EndEpisode):
                    break
            early = self._finish_step(action, plans, outcomes)
        if isinstance(early, _Ending):
            return self._graded(early, self._grade(early.summary))
        return early

    async def astep(self, action: str) -> StepResult:
        """Async :meth:`step`: awaits async tools; blocking tools, users, grading go on threads."""
        plans, early = self._begin_step(action)
        if isinstance(early, _AskUser):
            assert self._conversation is not None
            early = self._after_user(await aask_user(self._conversation, self._dialogue))
        elif early is None:
            outcomes: list[Outcome] = []
            for plan in plans:
                outcomes.append(await self._ainvoke(plan))
                if isinstance(outcomes[-1], InfraFailure | EndEpisode):
                    break
            early = self._finish_step(action, plans, outcomes)
        if isinstance(early, _Ending):
            loop = asyncio.get_running_loop()
            grade = await loop.run_in_executor(_GRADE_POOL, self._grade, early.summary)
            return self._graded(early, grade)
        return early

    def render(self) -> str | None:
        """With ``render_mode="ansi"``, the transcript so far as text."""
        if self.render_mode != "ansi":
            return None
        lines = [f"[{m['role']}] {m['content']}" for m in self.transcript]
        return "\n".join(lines)

    def close(self) -> None:
        """Releases the current episode's resources (safe to call twice)."""
        self._release_resources()
        self._done = True
        super().close()

    # ---- step internals ------------------------------------------------------------------------

    def _begin_step(
        self, action: str
    ) -> tuple[list[_Plan], StepResult | _Ending | _AskUser | None]:
        """Validates the action and decides what to do; returns an early result for non-calls."""
        if self._done or self.task is None:
            raise RuntimeError("the episode is over: call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        self._turn += 1
        self.transcript.append(message(Role.ASSISTANT, action))
        self._consume_budget(action)

        answer = self.answer_extractor(action)
        if answer is not None:
            problem = None if answer.error is not None else text_problem(answer.value)
            if problem is not None:
                # The agent's answer decodes to text no file, database or socket can take (a
                # lone surrogate escape): a malformed answer, scored as such, not a grader crash.
                error = f"final answer: {problem}"
                answer = FinalAnswer(raw=answer.raw, error=error)
            status = Status.OK if answer.error is None else Status.FORMAT_ERROR
            ending = self._end([], [], status, answer, terminated=True, ended_by=EndedBy.ANSWER)
            return [], ending

        parsed = self.format.parse(action)
        if not parsed.calls:
            problem = text_problem(parsed.content) if self._conversation is not None else None
            if self._conversation is None or problem is not None:
                self._counts["format_errors"] += 1
                text = NO_CALL_FEEDBACK.format() if problem is None else f"Error: {problem}"
                return [], self._continue([message(Role.USER, text)], [], format_error=True)
            self._dialogue.append(message(Role.ASSISTANT, parsed.content))
            return [], _ASK_USER

        plans = [self._plan(i, call) for i, call in enumerate(parsed.calls)]
        return plans, None

    def _plan(self, index: int, call: ParsedCall) -> _Plan:
        # The record keeps what the agent wrote, with any lone surrogate written back as its
        # escape so that logs and the learner can encode it; the tool only ever runs on
        # arguments that passed ``validate``, which refuses such text (so they equal these).
        record = ToolCallRecord(
            id=f"call_{self._turn}_{index}",
            name=escape_surrogates(call.name),
            arguments=escape_surrogates(call.arguments),
        )
        if index >= self.max_tool_calls_per_turn:
            record.error = (
                f"too many tool calls in one message (at most {self.max_tool_calls_per_turn})"
            )
        elif call.error is not None:
            record.error = f"malformed tool call: {call.error}"
        elif call.name not in self._tools:
            record.error = self.unknown_tool_error(record.name)
        else:
            tool = self._tools[call.name]
            problem = tool.validate(call.arguments)
            if problem is not None:
                record.error = f"invalid arguments for {call.name}: {problem}"
            else:
                return _Plan(record, tool)
        return _Plan(record)

    def _timeout(self, tool: Tool) -> float | None:
        return tool.timeout_s if tool.timeout_s is not None else self.tool_timeout_s

    def _invoke(self, plan: _Plan) -> Outcome:
        """Runs one planned call synchronously (see :func:`~mtrl_gym.invocation.run_call`)."""
        if plan.tool is None:
            return ToolError(plan.record.error or "")
        return run_call(plan.tool, plan.record.arguments or {}, self._timeout(plan.tool))

    async def _ainvoke(self, plan: _Plan) -> Outcome:
        """Runs one planned call without blocking the event loop."""
        if plan.tool is None:
            return ToolError(plan.record.error or "")
        return await arun_call(plan.tool, plan.record.arguments or {}, self._timeout(plan.tool))

    def _finish_step(
        self, action: str, plans: list[_Plan], outcomes: list[Outcome]
    ) -> StepResult | _Ending:
        messages: list[dict[str, JSON]] = []
        records: list[ToolCallRecord] = []
        infra: InfraFailure | None = None
        ending: EndEpisode | None = None
        for plan, outcome in zip(plans, outcomes, strict=False):
            record = plan.record
            self._counts["tool_calls"] += 1
            if isinstance(outcome, InfraFailure):
                record.error, infra = str(outcome), outcome
            elif isinstance(outcome, BaseException):
                record.error = str(outcome)
                if plan.tool is None:
                    self._counts["invalid_tool_calls"] += 1
            elif isinstance(outcome, EndEpisode):
                record.result, ending = self._cut(str(outcome.result)), outcome
            else:
                record.result = self._cut(outcome)
            content = record.result if record.error is None else f"Error: {record.error}"
            messages.append(message(Role.TOOL, content, tool_call_id=record.id, name=record.name))
            records.append(record)
        if infra is not None:
            return self._end(
                messages, records, infra.status, None, terminated=False, ended_by=EndedBy.FAILURE
            )
        if ending is not None:
            answer = None if ending.answer is None else _committed(ending.answer)
            return self._end(
                messages, records, Status.OK, answer, terminated=True, ended_by=EndedBy.TOOL
            )
        return self._continue(messages, records, format_error=False)

    def _after_user(self, reply: UserReply | InfraFailure) -> StepResult | _Ending:
        """Turns the user's reply into the step's result: the next observation, or the end."""
        if isinstance(reply, InfraFailure):
            ending = self._end(
                [], [], reply.status, None, terminated=False, ended_by=EndedBy.FAILURE
            )
            ending.info["user"] = {"error": str(reply)}
            return ending
        self._counts["user_turns"] += 1
        said = message(Role.USER, reply.text)
        self._dialogue.append(dict(said))
        # A user who ends the conversation without a word adds no empty message.
        messages = [said] if reply.text or not reply.done else []
        user_info = {"done": reply.done, "log": copy_json(reply.log)}
        if not reply.done:
            result = self._continue(messages, [], format_error=False)
            (result.info if isinstance(result, _Ending) else result[4])["user"] = user_info
            return result
        answer = None
        if self.answer_from_last_message:
            last = str(self._dialogue[-2]["content"])  # the agent's message the user answered
            answer = FinalAnswer(raw=last, value=last)
        ending = self._end(messages, [], Status.OK, answer, terminated=True, ended_by=EndedBy.USER)
        ending.info["user"] = user_info
        return ending

    def _cut(self, text: str) -> str:
        if len(text) <= self.max_result_chars:
            return text
        dropped = len(text) - self.max_result_chars
        return f"{text[: self.max_result_chars]}\n[... {dropped} characters cut]"

    def _continue(
        self,
        messages: list[dict[str, JSON]],
        records: list[ToolCallRecord],
        *,
        format_error: bool,
    ) -> StepResult | _Ending:
        observation = self._observe(messages)
        if self._turn >= self.max_turns or self._over_budget():
            return self._end(
                messages,
                records,
                Status.TRUNCATED,
                None,
                terminated=False,
                ended_by=EndedBy.LIMIT,
                format_error=format_error,
                observed=observation,
            )
        if self.time_limit_s is not None and time.monotonic() - self._start > self.time_limit_s:
            return self._end(
                messages,
                records,
                Status.TIMEOUT,
                None,
                terminated=False,
                ended_by=EndedBy.LIMIT,
                format_error=format_error,
                observed=observation,
            )
        info = self._step_info(messages, records, format_error)
        return observation, 0.0, False, False, info

    def _end(
        self,
        messages: list[dict[str, JSON]],
        records: list[ToolCallRecord],
        status: Status,
        answer: FinalAnswer | None,
        *,
        terminated: bool,
        ended_by: EndedBy,
        format_error: bool = False,
        observed: str | None = None,
    ) -> _Ending:
        """Closes the episode; what is left is grading (:meth:`_grade`) and :meth:`_graded`."""
        assert self.task is not None
        observation = observed if observed is not None else self._observe(messages)
        self._done = True
        summary = EpisodeSummary(
            task=self.task,
            status=status,
            final_answer=answer,
            tool_calls=tuple(json.loads(json.dumps(c)) for c in self._all_calls)
            + tuple(r.to_dict() for r in records),
            turns=self._turn,
            invalid_tool_calls=self._counts["invalid_tool_calls"],
            format_errors=self._counts["format_errors"],
            ended_by=ended_by,
            messages=tuple(copy_json(m) for m in self.transcript),
            user_turns=self._counts["user_turns"],
        )
        info = self._step_info(messages, records, format_error)
        info["final_answer"] = None if answer is None else answer.to_dict()
        info["ended_by"] = str(ended_by)
        return _Ending(observation, info, summary, terminated)

    def _grade(self, summary: EpisodeSummary) -> tuple[Status, float, dict[str, JSON]]:
        """Grades a finished episode: ``(status, reward, evaluation)``.

        The evaluation is computed before and independently of the reward. Grading that fails for
        infrastructure reasons (ToolInfraError, e.g. a sandbox that cannot start) ends the episode
        like a tool's infrastructure failure; any other exception is a bug and is raised. Safe to
        run on another thread: the episode is over, nothing else touches it meanwhile.
        """
        status = summary.status
        try:
            summary = dataclasses.replace(summary, grade=self.grade_episode(summary))
            evaluation = self.evaluator(summary)
            failed = status in (Status.INFRA_ERROR, Status.TIMEOUT)
            reward = 0.0 if failed else float(self.reward_fn(summary))
        except ToolInfraError as e:
            error = f"{type(e).__name__}: {e}"
            return (
                Status.INFRA_ERROR,
                0.0,
                {"success": False, "status": "infra_error", "error": error},
            )
        return status, reward, evaluation

    def _graded(self, ending: _Ending, grade: tuple[Status, float, dict[str, JSON]]) -> StepResult:
        status, reward, evaluation = grade
        terminated = ending.terminated and status != Status.INFRA_ERROR
        info = ending.info
        info["eval"] = evaluation
        info["status"] = str(status)
        return ending.observation, reward, terminated, not terminated, info

    def _step_info(
        self, messages: list[dict[str, JSON]], records: list[ToolCallRecord], format_error: bool
    ) -> dict[str, Any]:
        self._all_calls.extend(r.to_dict() for r in records)
        info: dict[str, Any] = {
            "messages": messages,
            "tool_calls": [r.to_dict() for r in records],
            "format_error": format_error,
            "turn": self._turn,
            "counts": dict(self._counts),
        }
        if self.diagnostics:
            info["diagnostics"] = {"elapsed_s": time.monotonic() - self._start}
        return info

    def _observe(self, messages: list[dict[str, JSON]]) -> str:
        self.transcript.extend(dict(m) for m in messages)
        parts = [
            self.format.render_result(str(m.get("name") or ""), m["content"])
            if m["role"] == Role.TOOL
            else m["content"]
            for m in messages
        ]
        observation = "\n".join(parts)
        self._consume_budget(observation)
        return observation

    def _consume_budget(self, text: str) -> None:
        self._chars += len(text)
        if self.token_counter is not None:
            self._tokens += self.token_counter(text)

    def _over_budget(self) -> bool:
        over_chars = self.max_episode_chars is not None and self._chars > self.max_episode_chars
        over_tokens = self.max_episode_tokens is not None and self._tokens > self.max_episode_tokens
        return over_chars or over_tokens

    def _release_resources(self) -> None:
        if self._resources is not None:
            resources, self._resources = self._resources, None
            resources.release()
        self._tools = {}
        self._conversation = None


def _committed(answer: JSON) -> FinalAnswer:
    """The final answer an ending tool committed to (its text form is ``raw``)."""
    raw = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
    return FinalAnswer(raw=raw, value=copy_json(answer))
