"""The optional dependency of ``mtrl_gym.remote``, imported only when a server or client is made.

``import mtrl_gym`` never imports this package, so the core installs and runs without aiohttp.
"""

from __future__ import annotations

from types import ModuleType


def require_aiohttp() -> ModuleType:
    """Returns the ``aiohttp`` module, or raises ``ImportError`` saying how to install it."""
    try:
        import aiohttp
        import aiohttp.web  # noqa: F401 - the server half is a submodule
    except ImportError as e:
        raise ImportError(
            "mtrl_gym.remote needs aiohttp: pip install 'mtrl[remote]' (or pip install aiohttp)"
        ) from e
    return aiohttp
