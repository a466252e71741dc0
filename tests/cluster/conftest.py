"""The cluster test's fixtures: a 3-node RabbitMQ cluster for the session, torn down even when
the test fails, and the shared fixtures (`launch`, `namespace`) pointed at it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.cluster import NODES, RabbitCluster
from tests.support.namespace import Namespace


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def amqp_url(rabbit_cluster: RabbitCluster) -> str:
    """Every node: what `launch` gives conveyor as CONVEYOR_AMQP_URL."""
    return rabbit_cluster.addresses


@pytest.fixture
async def namespace(rabbit_cluster: RabbitCluster) -> AsyncIterator[Namespace]:
    """A namespace on the cluster; the test's own checks go through the first node."""
    space = Namespace(f"test-{uuid.uuid4().hex[:12]}", rabbit_cluster.url(NODES[0]))
    yield space
    await space.cleanup()
