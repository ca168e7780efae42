"""Shared pytest fixtures: real services on free loopback ports, started and stopped here."""

from __future__ import annotations

import pytest

from infra.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Bootstrap string (``127.0.0.1:PORT``) of an in-memory Tansu broker shared by the session.

    fastslow's default topics exist (``interactions`` with 4 partitions, its DLQ and its
    fast-state changelog). Tests that produce or join groups should use their own topic and
    group names (e.g. with a uuid suffix), since the broker is shared.
    """
    with EmbeddedBroker(port=0, data_dir=tmp_path_factory.mktemp("broker")) as embedded:
        yield embedded.bootstrap
