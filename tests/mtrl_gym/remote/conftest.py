"""Fixtures for the remote tests (the modules themselves skip when aiohttp is missing)."""

import pytest


@pytest.fixture
def echo_server():
    from mtrl_gym.remote import BackgroundServer, ServerConfig, make_backend
    from tests.mtrl_gym.remote.echo import EchoEnv

    with BackgroundServer(make_backend(EchoEnv, name="echo"), ServerConfig(port=0)) as server:
        yield server
