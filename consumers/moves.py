"""Moving a delivery elsewhere (retry tier, dead-letter queue): publish with confirm, then ack.

A crash between the two leaves the original unacked, so it is redelivered: a duplicate at worst,
never a loss.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from producers import BROKER_FAILURES

__all__ = ["MessageMover", "MoveFailedError"]


_UNREACHABLE: tuple[type[Exception], ...] = (*BROKER_FAILURES, TimeoutError)


class MoveFailedError(Exception):
    """The copy was not confirmed; the original must stay where it is."""


class MessageMover:
    def __init__(self, channel: AbstractChannel, *, timeout: float) -> None:
        self._channel = channel  # opened with publisher_confirms=True
        self._timeout = timeout

    async def copy(
        self,
        message: AbstractIncomingMessage,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a copy of `message` with new headers; return only once RabbitMQ confirmed it."""
        copy = Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        try:
            async with asyncio.timeout(self._timeout):
                target = (
                    self._channel.default_exchange
                    if exchange == ""
                    else await self._channel.get_exchange(exchange, ensure=False)
                )
                confirmation = await target.publish(copy, routing_key=routing_key, mandatory=True)
        except DeliveryError:
            raise MoveFailedError(f"RabbitMQ nacked the copy to {routing_key!r}") from None
        except _UNREACHABLE as error:
            raise MoveFailedError(f"{type(error).__name__} moving to {routing_key!r}") from None
        if not isinstance(confirmation, Basic.Ack):
            raise MoveFailedError(f"RabbitMQ returned the copy: no queue for {routing_key!r}")
