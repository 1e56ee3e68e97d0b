"""Registration of mtrl environments with Gymnasium under ``<namespace>/<Name>-v<N>`` ids.

The built-in environments live in the ``mtrl`` namespace; a third-party package registers its
own under any namespace (``acme/Retail-v0``).

Ids are registered with string entry points (``"module:Class"``), so registering imports nothing:
an environment's module, and whatever it needs, is imported only when it is made. Gymnasium 1.x
reads no plugin entry points, so ``import mtrl_gym`` registers the built-in environments and
``gym.make("mtrl_gym:mtrl/<Name>-v0")`` works from a fresh interpreter.

Non-goals: environment discovery across third-party packages (they call :func:`register_env`).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

NAMESPACE = "mtrl"
# ``<namespace>/<Name>-v<N>``: a subset of Gymnasium's own id grammar (no ``:`` in the namespace,
# which ``gym.make`` would read as a module to import; a name and a version always present).
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*/[A-Z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*-v\d+$")

# The built-in environments (package ``mtrl_envs``, installed from ``envs/``).
BUILTIN_ENVS: dict[str, str] = {
    "mtrl/OrderLookup-v0": "mtrl_envs.order_lookup.env:OrderLookupEnv",
    "mtrl/Inventory-v0": "mtrl_envs.inventory.env:InventoryEnv",
    "mtrl/Calculator-v0": "mtrl_envs.calculator.env:CalculatorEnv",
    "mtrl/Helpdesk-v0": "mtrl_envs.helpdesk.env:HelpdeskEnv",
    "mtrl/SqlQuery-v0": "mtrl_envs.sql_query.env:SqlQueryEnv",
    "mtrl/PythonTests-v0": "mtrl_envs.python_tests.env:PythonTestsEnv",
    "mtrl/SupportChat-v0": "mtrl_envs.support_chat.env:SupportChatEnv",
}


# Authored SOP suites, all served by the generic SOP engine (``mtrl_envs.sop``).
SOP_SUITE_ENVS: dict[str, str] = {
    "mtrl/SopQuickstart-v0": "quickstart",
    "mtrl/SopRefunds-v0": "refunds",
    "mtrl/SopHazmat-v0": "hazmat",
    "mtrl/SopKyb-v0": "kyb",
    "mtrl/SopRouting-v0": "routing",
}


def register_env(env_id: str, entry_point: str, **kwargs: Any) -> None:
    """Registers an environment id; ids must look like ``<namespace>/<Name>-v<N>``.

    Any namespace may be used (``mtrl/OrderLookup-v0``, ``acme/Retail-v0``); the name starts with
    a capital letter. Re-registering an id with the same entry point is a no-op (modules may be
    re-imported); a different entry point for a taken id is an error rather than a silent
    override.
    """
    if not _ID_RE.match(env_id):
        raise ValueError(
            f"environment id {env_id!r} must look like '<namespace>/<Name>-v<N>', "
            "e.g. 'acme/Retail-v0'"
        )
    existing = gym.registry.get(env_id)
    if existing is not None:
        if existing.entry_point != entry_point:
            raise ValueError(
                f"{env_id} is already registered to {existing.entry_point}, not {entry_point}"
            )
        return
    # ``disable_env_checker``: Gymnasium's passive checker knows nothing of text spaces;
    # ``check_env`` and ``check_reproducible`` run the real checks (see ``mtrl_gym.checker``).
    gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)


def registered_env_ids() -> list[str]:
    """All registered ids in the ``mtrl`` namespace, sorted."""
    return sorted(k for k in gym.registry if k.startswith(f"{NAMESPACE}/"))


def resolve_env_id(env_id: str) -> EnvSpec:
    """The spec of any Gymnasium id, importing ``module`` first for ``"module:Name-vN"``.

    This is how ``gym.make`` reads ids, checked up front so a command line can report a bad id
    before making anything.

    Raises:
        ModuleNotFoundError: the ``module`` of ``"module:Name-vN"`` cannot be imported.
        gymnasium.error.Error: the id is not registered (the message suggests close ones).
    """
    module, sep, name = env_id.partition(":")
    if sep:
        importlib.import_module(module)
    else:
        name = env_id
    return gym.spec(name)


def register_builtin_envs() -> None:
    """Registers :data:`BUILTIN_ENVS` and :data:`SOP_SUITE_ENVS` (on ``import mtrl_gym``)."""
    for env_id, entry_point in BUILTIN_ENVS.items():
        register_env(env_id, entry_point)
    for env_id, suite in SOP_SUITE_ENVS.items():
        register_env(env_id, "mtrl_envs.suites:make_env", suite=suite)
