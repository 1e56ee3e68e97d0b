"""``python -m mtrl_gym``: see :mod:`mtrl_gym.cli`."""

from mtrl_gym.cli import main

main()
