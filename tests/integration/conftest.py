"""Fixtures for the integration tests: the real server as a module-scoped process, and the real `openai` client.

A module changes its server's settings by overriding the `server_config` fixture.
"""

from __future__ import annotations

from typing import Any, Iterator

import openai
import pytest

from tests.integration.support import DEFAULT_CONFIG, GatewayServer


@pytest.fixture(scope="module")
def server_config() -> dict[str, Any]:
    """The settings of the module's server; override this fixture in a module to change them."""
    return dict(DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def server(server_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("gateway"), server_config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> openai.OpenAI:
    return server.client()
