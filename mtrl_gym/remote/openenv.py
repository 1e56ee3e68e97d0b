"""A client for OpenEnv servers, so environments published in that ecosystem can be trained on.

OpenEnv servers keep one environment per WebSocket at ``/ws`` and speak
``{"type": "reset" | "step" | "close", "data": ...}``; they answer
``{"type": "observation", "data": {"observation": {...}, "reward": r | null, "done": bool}}`` or
``{"type": "error", "data": {"message", "code"}}``. That format has no ``truncated`` and no
``info``, so this client reconstructs what it can: ``done`` becomes ``terminated`` (status
``ok``), the local ``max_turns`` limit gives ``truncated`` (status ``truncated``), a missing
reward is 0.0, and the raw observation and metadata are kept under ``info["openenv"]``.

The agent acts in text: ``parse_action`` turns the assistant message into OpenEnv's action object
(default: the message is that JSON object) and ``render_observation`` turns an observation into
text (default: its JSON). A message that does not parse, or an action the server rejects as
invalid (``VALIDATION_ERROR``), is shown to the agent as an error and the episode goes on; a lost
connection or any other server error ends the episode as ``infra_error``.

Non-goals: OpenEnv's MCP mode, its HTTP endpoints (stateless per request) and its container
launchers (start the server yourself and pass its URL).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from mtrl_gym.remote.connection import (
    RemoteConnectionError,
    base_url,
    headers,
    io_thread,
    run_async,
    run_sync,
    submit,
)
from mtrl_gym.remote.protocol import ProtocolError, decode, encode, failure_step
from mtrl_gym.spaces import TextSpace
from mtrl_gym.types import Status


def _parse_json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"the action must be a JSON object, got {type(value).__name__}")
    return value


def _render_json(observation: Any) -> str:
    return json.dumps(observation, sort_keys=True)


class OpenEnvClient(gym.Env):
    """A text ``gymnasium.Env`` over one OpenEnv WebSocket session.

    Args:
        url: The OpenEnv server, ``http://host:port``.
        parse_action: Assistant text to OpenEnv action object; raise ``ValueError`` to reject.
        render_observation: OpenEnv observation object to the text the agent reads.
        max_turns: Steps before the episode is truncated locally.
        token: Optional bearer token sent with the WebSocket handshake.
        timeout_s: Limit on connecting and on each reply.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        url: str,
        *,
        parse_action: Callable[[str], dict[str, Any]] = _parse_json_object,
        render_observation: Callable[[Any], str] = _render_json,
        max_turns: int = 16,
        token: str | None = None,
        timeout_s: float = 60.0,
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.url = base_url(url)
        self.parse_action = parse_action
        self.render_observation = render_observation
        self.max_turns = max_turns
        self.token = token
        self.timeout_s = timeout_s
        self.action_space = TextSpace()
        self.observation_space = TextSpace()
        self._ws: Any = None
        self._turn = 0
        self._active = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Resets the remote environment (``options`` are sent as reset arguments)."""
        super().reset(seed=seed)
        data = dict(options or {})
        if seed is not None:
            data["seed"] = seed
        if self._ws is None or self._ws.closed:
            self._ws = run_sync(self._connect())
        payload = run_sync(self._exchange({"type": "reset", "data": data}))
        self._turn, self._active = 0, True
        return self.render_observation(payload.get("observation")), self._info(payload)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """One assistant message: parsed, sent, and the reply mapped to Gymnasium's result."""
        return run_sync(self._step(action))

    async def astep(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Async :meth:`step`."""
        return await run_async(self._step(action))

    def close(self) -> None:
        """Closes the WebSocket (the server closes its environment)."""
        ws, self._ws, self._active = self._ws, None, False
        if ws is not None:
            submit(self._close(ws))
        super().close()

    async def _close(self, ws: Any) -> None:
        with contextlib.suppress(Exception):  # best effort; closing the socket is what matters
            await ws.send_str(encode({"type": "close"}))
        await ws.close()

    async def _connect(self) -> Any:
        import aiohttp

        try:
            return (
                await io_thread()
                .http()
                .ws_connect(
                    f"{self.url}/ws",
                    headers=headers(self.token),
                    timeout=aiohttp.ClientWSTimeout(ws_receive=self.timeout_s, ws_close=1.0),
                    compress=0,
                )
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise RemoteConnectionError(f"cannot connect to {self.url}/ws: {e}") from None

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        import aiohttp

        try:
            await self._ws.send_str(encode(message))
            msg = await self._ws.receive(timeout=self.timeout_s)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise RemoteConnectionError(f"connection lost: {type(e).__name__}: {e}") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RemoteConnectionError(f"connection closed by the server ({msg.type.name})")
        try:
            reply = decode(msg.data)
        except ProtocolError as e:
            raise RemoteConnectionError(str(e)) from None
        if not isinstance(reply, dict) or not isinstance(reply.get("data"), dict):
            raise RemoteConnectionError(f"unexpected OpenEnv reply {reply!r:.200}")
        if reply.get("type") == "error":
            raise _OpenEnvError(str(reply["data"].get("code")), str(reply["data"].get("message")))
        return reply["data"]

    async def _step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self._active:
            raise RuntimeError("the episode is over: call reset() before step()")
        self._turn += 1
        try:
            payload = self.parse_action(action)
        except ValueError as e:
            return self._feedback(f"Error: your action could not be parsed: {e}")
        try:
            data = await self._exchange({"type": "step", "data": payload})
        except _OpenEnvError as e:
            if "VALIDATION" in e.code.upper():
                return self._feedback(f"Error: the environment rejected the action: {e.message}")
            return self._lost(f"OpenEnv error {e.code}: {e.message}")
        except RemoteConnectionError as e:
            return self._lost(f"RemoteConnectionError: {e}")
        reward = float(data.get("reward") or 0.0)
        info = self._info(data)
        terminated = bool(data.get("done", False))
        truncated = not terminated and self._turn >= self.max_turns
        if terminated or truncated:
            self._active = False
            info["status"] = str(Status.OK if terminated else Status.TRUNCATED)
        return self.render_observation(data.get("observation")), reward, terminated, truncated, info

    def _info(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "openenv": {"observation": data.get("observation"), "metadata": data.get("metadata")},
            "turn": self._turn,
            "format_error": False,
        }

    def _feedback(self, text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        info = {"openenv": None, "turn": self._turn, "format_error": True}
        truncated = self._turn >= self.max_turns
        if truncated:
            self._active = False
            info["status"] = str(Status.TRUNCATED)
        return text, 0.0, False, truncated, info

    def _lost(self, error: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._active = False
        ws, self._ws = self._ws, None
        if ws is not None:
            submit(ws.close())
        return failure_step(Status.INFRA_ERROR, error, turn=self._turn)


class _OpenEnvError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message
