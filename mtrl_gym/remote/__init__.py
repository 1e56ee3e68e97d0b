"""Remote environments and tools: serve them over HTTP/WebSocket, train against them elsewhere.

Serve a registered environment (``python -m mtrl_gym.remote serve mtrl/Helpdesk-v0``) or plain
tools from your own service (:func:`serve_tools`), and connect with :class:`RemoteEnv` (a
``gymnasium.Env``), :class:`RemoteTools` / :func:`remote_tools` (tools for a local
:class:`~mtrl_gym.TextEnv`), or :class:`OpenEnvClient` (servers of the OpenEnv ecosystem).

Needs the ``remote`` extra (aiohttp); ``import mtrl_gym`` never imports this package.
"""

from mtrl_gym.remote._deps import require_aiohttp

require_aiohttp()

from mtrl_gym.remote.client import (  # noqa: E402
    TOKEN_ENV_VAR,
    RemoteEnv,
    RemoteTools,
    ToolSession,
    make_remote,
    remote_tools,
)
from mtrl_gym.remote.connection import RemoteConnectionError, RemoteRequestError  # noqa: E402
from mtrl_gym.remote.openenv import OpenEnvClient  # noqa: E402
from mtrl_gym.remote.protocol import PROTOCOL_VERSION  # noqa: E402
from mtrl_gym.remote.server import (  # noqa: E402
    BackgroundServer,
    ServerConfig,
    create_app,
    make_backend,
    serve,
)

__all__ = [
    "PROTOCOL_VERSION",
    "TOKEN_ENV_VAR",
    "BackgroundServer",
    "OpenEnvClient",
    "RemoteConnectionError",
    "RemoteEnv",
    "RemoteRequestError",
    "RemoteTools",
    "ServerConfig",
    "ToolSession",
    "create_app",
    "make_backend",
    "make_remote",
    "remote_tools",
    "serve",
]
