"""mtrl_envs: the built-in environments, installed from ``envs/``.

Each environment lives in its own folder (``env.py``, data, generator). Their ids are registered
by ``import mtrl_gym`` with lazy string entry points; importing this package registers them too.
Built on ``mtrl_gym`` only: nothing here imports JAX.
"""

from mtrl_gym.registration import register_builtin_envs

register_builtin_envs()
