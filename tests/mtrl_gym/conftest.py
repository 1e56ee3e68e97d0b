"""Fixtures for the mtrl_gym tests."""

import pytest

from tests.mtrl_gym.toy import ASYNC_SLEEPY, CRASH, SLEEPY, ToyEnv


@pytest.fixture
def toy_env():
    env = ToyEnv(extra_tools=(CRASH, SLEEPY, ASYNC_SLEEPY), tool_timeout_s=2.0)
    yield env
    env.close()
