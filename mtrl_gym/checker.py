"""Conformance checks for text environments: Gymnasium's ``check_env`` and reproducibility.

:func:`check_reproducible` plays the same task with the same scripted actions three times (twice
on fresh instances, once more on a reused instance, which catches state leaking across episodes)
and compares every observation, message, tool call, tool result, user reply, reward and flag, and
the final transcript. The default script probes the error paths (no call, unknown tool), calls
every tool with arguments made from its schema, then answers; in an environment with a user the
plain messages are user turns, and the script sends one more. Environments with an oracle are also
played by their oracle. A user simulator that says it is not reproducible (a model sampled at a
positive temperature) is refused up front: pin it (temperature 0 with a seed, or a recording).

Non-goals: checking that a task is solvable or that the reward is right (the envs' own tests).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.utils.env_checker import check_env as gym_check_env

from mtrl_gym.core import TextEnv
from mtrl_gym.users import is_reproducible

Policy = Callable[[str, dict[str, Any]], str]


class ReproducibilityError(AssertionError):
    """Two plays of the same task with the same actions differed."""


EnvLike = str | gym.Env | Callable[[], gym.Env]
"""What both checks accept: a registered id (``"mtrl/OrderLookup-v0"``, or ``"module:Name-vN"``,
which imports ``module`` first, as in ``gym.make``), an instance, or a zero-argument factory."""


def _open(env: EnvLike, kwargs: Mapping[str, Any]) -> tuple[gym.Env, bool]:
    """Makes or takes an environment; returns it and whether the check owns (must close) it.

    Ids and factories give a fresh instance the check closes; an instance is the caller's, used
    as is and left open. ``kwargs`` (for ``gym.make``) only make sense with an id.
    """
    if isinstance(env, str):
        return gym.make(env, **kwargs), True
    if kwargs:
        raise TypeError(f"environment arguments {sorted(kwargs)} apply only to an id, not {env!r}")
    if isinstance(env, gym.Env):
        return env, False
    if callable(env):
        instance = env()
        if not isinstance(instance, gym.Env):
            raise TypeError(f"the factory {env!r} returned {type(instance)}, not a gym.Env")
        return instance, True
    raise TypeError(f"expected an id, a gym.Env or a zero-argument factory, got {type(env)}")


def check_env(env: EnvLike, **kwargs: Any) -> None:
    """Runs Gymnasium's ``check_env``, with its warnings raised as errors.

    Args:
        env: An id, an instance or a zero-argument factory (see :data:`EnvLike`). An instance
            is left open; an environment made here is closed.
        **kwargs: Keyword arguments for ``gym.make`` when ``env`` is an id.

    Raises:
        TypeError: ``kwargs`` with an instance or factory, or ``env`` of none of these kinds.
    """
    instance, owned = _open(env, kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # An instance built directly (not by gym.make) has no spec, so Gymnasium cannot
            # rebuild it in other render modes and says so: a limit of the check, not a defect.
            warnings.filterwarnings("ignore", message=".*alternative render modes.*")
            gym_check_env(instance.unwrapped)
    finally:
        if owned:
            instance.close()


def example_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments that satisfy a simple JSON schema: required properties with plausible values.

    >>> example_arguments({"type": "object", "properties": {"n": {"type": "integer"},
    ...     "mode": {"enum": ["a", "b"]}}, "required": ["n", "mode"]})
    {'n': 1, 'mode': 'a'}
    """
    props = schema.get("properties", {})
    return {name: _example_value(props.get(name, {})) for name in schema.get("required", [])}


def _example_value(schema: Mapping[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    if schema.get("examples"):
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _example_value(schema[key][0])
    kind = schema.get("type", "string")
    kind = kind[0] if isinstance(kind, list) else kind
    values = {"integer": 1, "number": 1.0, "boolean": True, "null": None, "array": []}
    if kind == "object":
        return example_arguments(schema)
    return values.get(kind, "x")


def probe_actions(env: TextEnv) -> list[str]:
    """A script exercising the error paths and every tool of the current episode."""
    fmt = env.format
    actions = [
        "Let me think about this first.",  # neither a call nor an answer: format feedback
        fmt.render_calls([("no_such_tool", {})]),  # unknown tool
    ]
    for name, tool in sorted(env.tools.items()):
        if not tool.ends_episode:  # it would cut the script short: see ending_probe_actions
            actions.append(fmt.render_calls([(name, example_arguments(tool.parameters))]))
    if env.user is not None:
        actions.append("Could you tell me more about that, please?")  # a second user turn
    actions.append("<final_output>{}</final_output>")
    return actions


def ending_probe_actions(env: TextEnv) -> list[str] | None:
    """The probe script ending with the first tool declared ``ends_episode``, if there is one."""
    ending = sorted(name for name, tool in env.tools.items() if tool.ends_episode)
    if not ending:
        return None
    call = (ending[0], example_arguments(env.tools[ending[0]].parameters))
    return [*probe_actions(env)[:-1], env.format.render_calls([call])]


def _scrub(info: Mapping[str, Any]) -> dict[str, Any]:
    """Drops the opt-in, non-deterministic diagnostics."""
    return {k: v for k, v in info.items() if k != "diagnostics"}


def play(
    env: gym.Env,
    *,
    seed: int | None,
    options: dict[str, Any] | None = None,
    actions: Sequence[str] | None = None,
    policy: Policy | None = None,
    oracle: bool = False,
    max_steps: int = 64,
) -> list[dict[str, Any]]:
    """Plays one episode and returns its full record: reset output, then every step's output.

    One of ``actions`` (a fixed script), ``policy``, or ``oracle`` (the environment's oracle
    policy for the task drawn at reset) is used; with none, the probe script is played.
    """
    obs, info = env.reset(seed=seed, options=options)
    record: list[dict[str, Any]] = [{"reset": seed, "observation": obs, "info": _scrub(info)}]
    script = list(actions) if actions is not None else None
    if oracle:
        policy = env.unwrapped.oracle_policy()  # type: ignore[attr-defined]
        if policy is None:
            raise ValueError(f"{env.unwrapped} has no oracle policy")
    if script is None and policy is None:
        script = probe_actions(env.unwrapped)  # type: ignore[arg-type]
    for i in range(max_steps):
        if script is not None:
            if i >= len(script):
                break
            action = script[i]
        else:
            assert policy is not None
            action = policy(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        record.append(
            {
                "action": action,
                "observation": obs,
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "info": _scrub(info),
            }
        )
        if terminated or truncated:
            break
    return record


def _transcript(env: gym.Env) -> dict[str, Any]:
    """The environment's transcript after a play (user turns included), for comparison."""
    return {"transcript": list(getattr(env.unwrapped, "transcript", []))}


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path or '<root>'}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: present on one side only"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def check_reproducible(
    env: EnvLike,
    *,
    seeds: Sequence[int] = (0, 1),
    actions: Sequence[str] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    use_oracle: bool = True,
) -> int:
    """Checks that the same task and actions give the same messages, tool results and rewards.

    Args:
        env: An id, an instance or a zero-argument factory (see :data:`EnvLike`). From an id or
            a factory, two fresh instances are compared, then one reused; an instance, which
            cannot be copied, is played all three times (this still catches state leaking
            across episodes and nondeterminism) and left open.
        seeds: Reset seeds to check (each selects a task).
        actions: A fixed action script; default: the probe script, plus the oracle if any.
        env_kwargs: Keyword arguments for ``gym.make`` when ``env`` is an id.
        use_oracle: Also play the environment's oracle policy when it has one.

    Returns:
        The number of episodes compared (for reporting).

    Raises:
        ReproducibilityError: naming the seed, the script and the first differing field.
        TypeError: ``env_kwargs`` with an instance or factory, or an ``env`` of none of the
            accepted kinds.
    """
    kwargs = dict(env_kwargs or {})
    first, owned = _open(env, kwargs)
    second = _open(env, kwargs)[0] if owned else first
    compared = 0
    user = getattr(first.unwrapped, "user", None)
    if not is_reproducible(user):
        if owned:
            first.close()
            second.close()
        raise ReproducibilityError(
            f"the user simulator {user!r} is not reproducible: use temperature 0 with a seed, "
            "or replay a recording (mtrl_gym.users.RecordedUser)"
        )
    try:
        for seed in seeds:
            scripts: list[tuple[str, dict[str, Any]]] = []
            if actions is not None:
                scripts.append(("actions", {"actions": actions}))
            else:
                first.reset(seed=seed)
                scripts.append(("probe", {"actions": probe_actions(first.unwrapped)}))  # type: ignore[arg-type]
                ending = ending_probe_actions(first.unwrapped)  # type: ignore[arg-type]
                if ending is not None:
                    scripts.append(("ending probe", {"actions": ending}))
                if use_oracle and first.unwrapped.oracle_policy() is not None:  # type: ignore[attr-defined]
                    scripts.append(("oracle", {"oracle": True}))
            for label, script in scripts:
                # The third play reuses an instance, which catches state leaking across episodes.
                runs = [
                    [*play(instance, seed=seed, **script), _transcript(instance)]
                    for instance in (first, second, first)
                ]
                for n, other in enumerate(runs[1:], 2):
                    normal = json.loads(json.dumps(runs[0], default=str))
                    diff = _first_difference(normal, json.loads(json.dumps(other, default=str)))
                    if diff:
                        raise ReproducibilityError(
                            f"seed {seed}, {label} script, play 1 vs play {n}: {diff}"
                        )
                compared += len(runs)
    finally:
        if owned:
            first.close()
            second.close()
    return compared
