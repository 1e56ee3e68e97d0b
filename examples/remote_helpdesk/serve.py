"""Serves the stateful sqlite Helpdesk environment over HTTP/WebSocket (one process).

Run: ``python examples/remote_helpdesk/serve.py --port 8765`` (loopback, no token), or bind
another address with a token: ``MTRL_REMOTE_TOKEN=$(python -c 'import secrets;
print(secrets.token_urlsafe())') python examples/remote_helpdesk/serve.py --host 0.0.0.0``.
Equivalent to ``python -m mtrl_gym.remote serve mtrl/Helpdesk-v0``.
"""

from __future__ import annotations

import argparse
import os

from mtrl_gym.remote import TOKEN_ENV_VAR, ServerConfig, make_backend, serve


def main() -> None:
    """Parses the flags and serves until Ctrl-C."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    config = ServerConfig(host=args.host, port=args.port, token=os.environ.get(TOKEN_ENV_VAR))
    # Every session gets its own HelpdeskEnv, hence its own sqlite database per episode.
    serve(make_backend("mtrl/Helpdesk-v0", env_kwargs={"split": args.split}), config)


if __name__ == "__main__":
    main()
