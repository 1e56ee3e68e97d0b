"""The wire format between the remote server and its clients: JSON frames, checked on arrival.

Every request is a JSON object ``{"id": <int>, "op": <str>, ...}``; every reply echoes the ``id``
and carries either ``"ok": true`` with the op's payload or ``"ok": false`` with
``"error": {"code": <HTTP-like status>, "message": <text>}``. The same objects travel in WebSocket
text frames and in HTTP bodies.

Ops: ``reset`` (``seed``, ``options``), ``step`` (``action``), ``call`` (``name``,
``arguments``; tools-only servers) and ``close``. A step reply carries all five parts of
Gymnasium's step result: ``observation``, ``reward``, ``terminated``, ``truncated`` and ``info``
(with ``status`` inside ``info``, as :class:`~mtrl_gym.TextEnv` puts it), so nothing is lost on
the way, unlike wire formats that fold the last two into ``done``.

Non-goals: non-JSON observations (images, arrays beyond ``tolist``) and schema negotiation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mtrl_gym.types import JSON, Status

PROTOCOL_VERSION = 1
OPS = ("reset", "step", "call", "close")
# Gymnasium rejects negative seeds and numpy's seeding takes at most 128-bit integers.
_MAX_SEED = 2**128 - 1


class ProtocolError(Exception):
    """A frame or request the server refuses; ``code`` is the HTTP-like status to report."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Request:
    """One decoded, validated request.

    Attributes:
        id: The client's request number, echoed in the reply.
        op: One of :data:`OPS`.
        seed: ``reset``: the seed, or ``None``.
        options: ``reset``: the options object, or ``None``.
        action: ``step``: the action (a JSON value; text environments take a string).
        name: ``call``: the tool name.
        arguments: ``call``: the arguments object.
    """

    id: int
    op: str
    seed: int | None = None
    options: dict[str, JSON] | None = None
    action: JSON = None
    name: str | None = None
    arguments: dict[str, JSON] | None = None


def _default(value: Any) -> JSON:
    """Lets numpy scalars and arrays through ``json.dumps``; anything else is an error."""
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode(obj: Any) -> str:
    r"""Encodes a frame; raises ``TypeError`` for values JSON cannot carry.

    The result is pure ASCII: every other character is written as a ``\uXXXX`` escape. So any
    Python string encodes, lone surrogates included (an agent's text can hold them), and the
    frame's UTF-8 encoding on the wire cannot fail; ``ensure_ascii=False`` would break both.

    Example:
        >>> encode({"obs": "a\ud800"})
        '{"obs":"a\\ud800"}'
    """
    # NaN/inf are allowed on purpose: a reward may be NaN, and both ends are Python's json.
    return json.dumps(obj, default=_default, separators=(",", ":"), ensure_ascii=True)


def has_lone_surrogates(value: Any) -> bool:
    r"""Whether a decoded JSON value holds a string that is not valid Unicode text.

    JSON may escape half of a UTF-16 surrogate pair (``"\ud800"``); it decodes to a Python
    string that cannot be encoded as UTF-8.

    Example:
        >>> has_lone_surrogates({"a": ["ok", "\ud800"]}), has_lone_surrogates("\u00e9")
        (True, False)
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogates(k) or has_lone_surrogates(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_lone_surrogates(v) for v in value)
    return False


def decode(text: str | bytes) -> Any:
    """Decodes a frame; malformed JSON becomes a 400 :class:`ProtocolError`."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError(400, f"body is not valid JSON: {e}") from None


def parse_request(frame: Any, *, default_op: str | None = None) -> Request:
    """Validates a decoded request object.

    Args:
        frame: The decoded JSON value.
        default_op: The op implied by an HTTP path (``/sessions/{id}/step``); a frame's own
            ``op``, if any, must agree with it.

    Raises:
        ProtocolError: With code 400 (malformed) or 422 (well-formed but invalid values).
    """
    if not isinstance(frame, dict):
        raise ProtocolError(400, f"a request must be a JSON object, got {type(frame).__name__}")
    op = frame.get("op", default_op)
    if default_op is not None and op != default_op:
        raise ProtocolError(400, f"this endpoint takes op {default_op!r}, the body says {op!r}")
    if op not in OPS:
        raise ProtocolError(400, f"'op' must be one of {list(OPS)}, got {op!r}")
    rid = frame.get("id", 0)
    if type(rid) is not int or not 0 <= rid < 2**63:
        raise ProtocolError(400, f"'id' must be a non-negative integer, got {rid!r}")
    if op == "reset":
        seed, options = frame.get("seed"), frame.get("options")
        if seed is not None and (type(seed) is not int or not 0 <= seed <= _MAX_SEED):
            raise ProtocolError(
                422, f"'seed' must be null or an integer in [0, 2**128), got {seed!r}"
            )
        if options is not None and not isinstance(options, dict):
            raise ProtocolError(422, f"'options' must be null or an object, got {options!r}")
        return Request(id=rid, op=op, seed=seed, options=options)
    if op == "step":
        if "action" not in frame:
            raise ProtocolError(400, "a step request needs an 'action'")
        return Request(id=rid, op=op, action=frame["action"])
    if op == "call":
        name, arguments = frame.get("name"), frame.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise ProtocolError(422, f"'name' must be a non-empty string, got {name!r}")
        if not isinstance(arguments, dict):
            raise ProtocolError(422, f"'arguments' must be an object, got {arguments!r}")
        return Request(id=rid, op=op, name=name, arguments=arguments)
    return Request(id=rid, op=op)


def error_reply(rid: int | None, code: int, message: str) -> dict[str, JSON]:
    """A failure reply."""
    return {"id": rid, "ok": False, "error": {"code": code, "message": message}}


def step_reply(
    rid: int, episode: int, result: tuple[Any, float, bool, bool, dict[str, Any]]
) -> dict[str, JSON]:
    """A step reply carrying Gymnasium's five-part result unchanged."""
    observation, reward, terminated, truncated, info = result
    return {
        "id": rid,
        "ok": True,
        "op": "step",
        "episode": episode,
        "observation": observation,
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": info,
    }


def read_step_reply(reply: dict[str, Any]) -> tuple[Any, float, bool, bool, dict[str, Any]]:
    """The five-part step result from a step reply (checked, since it crossed a network)."""
    try:
        reward = reply["reward"]
        terminated, truncated, info = reply["terminated"], reply["truncated"], reply["info"]
        observation = reply["observation"]
    except KeyError as e:
        raise ProtocolError(502, f"step reply lacks {e}") from None
    if not isinstance(reward, int | float) or isinstance(reward, bool):
        raise ProtocolError(502, f"step reply has a non-numeric reward {reward!r}")
    if not isinstance(terminated, bool) or not isinstance(truncated, bool):
        raise ProtocolError(502, "step reply has non-boolean terminated/truncated")
    if not isinstance(info, dict):
        raise ProtocolError(502, "step reply has an info that is not an object")
    return observation, float(reward), terminated, truncated, info


def failure_step(
    status: Status, error: str, *, turn: int | None = None, counts: dict[str, int] | None = None
) -> tuple[str, float, bool, bool, dict[str, Any]]:
    """The step result of an episode lost to the network or the server.

    It has the shape :class:`~mtrl_gym.TextEnv` gives an infrastructure failure: empty
    observation, reward 0.0, ``terminated=False``, ``truncated=True``, ``info["status"]`` set to
    ``status`` (``infra_error`` or ``timeout``, both excluded by the trainer) and
    ``info["eval"] == {"success": False, "status": ..., "error": ...}``.
    """
    info: dict[str, Any] = {
        "messages": [],
        "tool_calls": [],
        "format_error": False,
        "final_answer": None,
        "eval": {"success": False, "status": str(status), "error": error},
        "status": str(status),
        "ended_by": "failure",  # EndedBy.FAILURE, as a local infrastructure failure says
        "remote_error": error,
    }
    if turn is not None:
        info["turn"] = turn
    if counts is not None:
        info["counts"] = dict(counts)
    return "", 0.0, False, True, info
