"""Fixtures shared by the integration tests that work on one bare queue."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest


@pytest.fixture(scope="session", autouse=True)
def _broker_has_consistent_hash(consistent_hash_exchange: None) -> None:
    """Every broker test runs on a broker with the exchange type ordered subscriptions need."""


@pytest.fixture
async def queue_name(amqp_url: str) -> AsyncIterator[str]:
    """A quorum queue of its own on the broker, deleted afterwards."""
    name = f"test-queue-{uuid.uuid4().hex[:12]}"
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(name, arguments={"x-queue-type": "quorum"}, durable=True)
    yield name
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        with contextlib.suppress(aiormq.exceptions.ChannelClosed):
            await channel.queue_delete(name)
