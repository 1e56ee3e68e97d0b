"""A third-party package's registrations, for ``module:Name-vN`` ids (imported by the tests)."""

from mtrl_gym import register_env

register_env("acme/Toy-v0", "tests.mtrl_gym.toy:ToyEnv")
