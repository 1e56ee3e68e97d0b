"""How the remote server logs requests it refuses: one line each, never a traceback.

A refused request is the client's mistake, not the server's, and a client (or a scanner) can send
thousands of them; each gets one ``INFO`` line naming the method and path (or the parser's
reason) and the client's address. Tracebacks are kept for the server's own bugs.

aiohttp logs every request its HTTP parser rejects with a full traceback;
:class:`QuietParseErrors` wraps the logger it is given and turns those into one line.

Non-goals: access logs (the server runs with aiohttp's access log off) and log configuration
(the command line sets a handler; a library user sets their own).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from mtrl_gym.remote._deps import require_aiohttp

_HttpProcessingError: type[Exception] = require_aiohttp().http.HttpProcessingError


def one_line(text: str, limit: int = 300) -> str:
    r"""``text`` fit for one log line: whitespace runs collapsed, control characters escaped.

    Client-controlled text (paths, parser messages quoting the request) could otherwise forge
    log lines or flood them.

    Example:
        >>> one_line("bad\r\nline:   x\x00")
        'bad line: x\\x00'
    """
    flat = " ".join(text.split())
    escaped = flat.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _parser_reason(exc: Exception) -> str:
    """The parser's message without the caret lines that point into the quoted request."""
    message = str(getattr(exc, "message", "") or exc)
    lines = [line for line in message.splitlines() if line.strip().strip("^")]
    return one_line(" ".join(lines))


class QuietParseErrors(logging.LoggerAdapter[logging.Logger]):
    """A logger for aiohttp's connections that logs a malformed request as one ``INFO`` line.

    Anything else (aiohttp's own errors, unexpected exceptions) passes through unchanged,
    traceback included.
    """

    def __init__(self, logger: logging.Logger):
        super().__init__(logger, {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Logs ``msg``; one line without a traceback when it reports a parse error."""
        exc = _exception_of(kwargs.get("exc_info"))
        if isinstance(exc, _HttpProcessingError):
            # aiohttp's own text ("Error handling request from <address>") names the client.
            where = one_line(str(msg) % args if args else str(msg))
            self.logger.info("malformed HTTP request: %s: %s", where, _parser_reason(exc))
            return
        super().log(level, msg, *args, **kwargs)


def _exception_of(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None


def describe(method: str, path: str, match_info: Mapping[str, str]) -> str:
    """``METHOD /path`` for a log line, with the session id (a capability) masked."""
    session_id = match_info.get("session_id")
    if session_id:
        path = path.replace(session_id, "{session_id}")
    return f"{one_line(method, 20)} {one_line(path, 200)}"
