"""A small client for Python services that publish events to conveyor straight over AMQP."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from producers.event import OutgoingEvent, new_event
from producers.publisher import AmqpPublisher
from producers.topology import Topology, declare_events_exchange

__all__ = ["EventClient"]


class EventClient:
    """Publish CloudEvents to `{namespace}.events` with the same contract as the HTTP ingress.

    ```python
    async with EventClient("amqp://guest:guest@localhost/", namespace="conveyor") as client:
        event_id = await client.send("user.signup", {"user": 42}, source="/accounts")
    ```
    `send` returns once RabbitMQ confirmed the event and raises `PublishError` otherwise.
    """

    def __init__(self, amqp_url: str, *, namespace: str = "conveyor", timeout: float = 5.0) -> None:
        self._url = amqp_url
        self._topology = Topology(namespace)
        self._publisher = AmqpPublisher(timeout=timeout)
        self._connection: AbstractRobustConnection | None = None

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect_robust(
            self._url,
            client_properties={
                "connection_name": "conveyor-client",
            },
        )
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await declare_events_exchange(channel, self._topology)
        self._publisher.attach(self._connection, channel, exchange)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._publisher.detach()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, event: OutgoingEvent, *, correlation_id: str | None = None) -> None:
        await self._publisher.publish(event, correlation_id=correlation_id)

    async def send(self, type: str, data: Any = None, **attributes: Any) -> str:  # noqa: A002 - CloudEvents name
        """Build an event (see `new_event` for the keywords), publish it, return its id."""
        event = new_event(type, data, **attributes)
        await self.publish(event)
        return event.id
