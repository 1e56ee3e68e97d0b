"""Command line: ``python -m mtrl_gym.remote serve ENV [options]``.

``ENV`` is a registered id (``mtrl/Helpdesk-v0``) or a ``module:attr`` factory; ``--tools
module:attr`` serves a tool list or tool factory instead. The token comes from the
``MTRL_REMOTE_TOKEN`` environment variable (or ``--token-file``), never from the command line,
where other users could read it in the process list. The server's log (one line per refused
request, tracebacks only for server faults) goes to stderr at ``--log-level``.

Connection limits (see :class:`~mtrl_gym.remote.ServerConfig`): ``--header-timeout`` (seconds
to send a request head), ``--keepalive-timeout`` (seconds an idle HTTP connection stays open)
and ``--max-connections-per-client`` (connections one address may hold).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mtrl_gym.remote.client import TOKEN_ENV_VAR
from mtrl_gym.remote.server import ServerConfig, make_backend, serve


def _load(target: str) -> object:
    module, sep, attr = target.partition(":")
    if not sep:
        raise SystemExit(f"--tools must look like 'module:attr', got {target!r}")
    return getattr(importlib.import_module(module), attr)


def main(argv: Sequence[str] | None = None) -> None:
    """Parses ``argv`` and serves until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m mtrl_gym.remote")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve", help="serve an environment or tools over HTTP/WebSocket")
    p.add_argument("env", nargs="?", help="registered id (mtrl/Helpdesk-v0) or module:attr")
    p.add_argument("--tools", help="module:attr of a tool list or a zero-argument tool factory")
    p.add_argument("--env-kwargs", default="{}", help="JSON object passed to the env factory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token-file", type=Path, help=f"file holding the token (or ${TOKEN_ENV_VAR})")
    p.add_argument("--max-sessions", type=int, default=256)
    p.add_argument("--idle-ttl", type=float, default=900.0, help="seconds")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20)
    p.add_argument("--threads", type=int, default=32)
    defaults = ServerConfig()
    p.add_argument(
        "--header-timeout",
        type=float,
        default=defaults.header_timeout_s,
        help="seconds a connection has to send a complete request head (and a body)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=defaults.keepalive_timeout_s,
        help="seconds an HTTP connection may stay open with no request in progress",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=defaults.max_connections_per_client,
        help="connections one client address may hold open; more are refused (503)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    token = os.environ.get(TOKEN_ENV_VAR) or None
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=token,
            max_sessions=args.max_sessions,
            idle_ttl_s=args.idle_ttl,
            max_request_bytes=args.max_request_bytes,
            threads=args.threads,
            header_timeout_s=args.header_timeout,
            keepalive_timeout_s=args.keepalive_timeout,
            max_connections_per_client=args.max_connections_per_client,
        )
        env_kwargs = json.loads(args.env_kwargs)
        if not isinstance(env_kwargs, dict):
            raise ValueError("--env-kwargs must be a JSON object")
        tools = _load(args.tools) if args.tools else None
        backend = make_backend(args.env, tools=tools, env_kwargs=env_kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(backend, config)


if __name__ == "__main__":
    main()
