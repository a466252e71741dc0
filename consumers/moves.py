"""Moving a delivery elsewhere (retry tier, dead-letter queue): publish with confirm, then ack.

A crash between the two leaves the original unacked, so it is redelivered: a duplicate at worst,
never a loss.
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import DeliveryError
from pamqp import encode
from pamqp.commands import Basic

from consumers.dead_letter import ERROR_MESSAGE, ERROR_TRACEBACK
from consumers.delivery import Inbound
from producers.deadlines import settle_by, wait_by
from producers.frames import WireMessage, content_header_frame
from producers.pipeline import ChannelPipeline
from producers.publisher import BROKER_FAILURES
from producers.same_id import SameIdGate

__all__ = [
    "CopyRefusedError",
    "MessageMover",
    "MoveFailedError",
    "Mover",
    "UncopyableMessageError",
    "copy_of",
]

_UNREACHABLE: tuple[type[Exception], ...] = (*BROKER_FAILURES, TimeoutError)
# What writing a message can raise for a value it cannot encode.
_UNENCODABLE: tuple[type[Exception], ...] = (TypeError, ValueError, OverflowError)
_UNPUBLISHABLE: tuple[type[Exception], ...] = (*_UNREACHABLE, *_UNENCODABLE)
# RabbitMQ's default frame_max is 131072 bytes and the whole header table must fit one frame
# with the other properties; a copy whose headers grew past this would make the broker close
# the connection. A broker that negotiated a smaller frame_max gets less (`fit_to_frame`).
MAX_HEADER_TABLE_BYTES = 120_000
_FLOAT32_MAX = 3.4e38


class MoveFailedError(Exception):
    """The copy was not confirmed; the original must stay where it is."""


class UncopyableMessageError(MoveFailedError):
    """The message itself cannot be copied (headers too large, or not writable again): trying
    again cannot help."""


class CopyRefusedError(MoveFailedError):
    """RabbitMQ returned the copy: no queue takes it, and trying again will not change that.

    A nack is not this: it can pass (a queue at its length limit), so the original stays queued.
    """


def _announce_outcome(confirmation: asyncio.Future[Any]) -> MoveFailedError | None:
    if not confirmation.done():
        confirmation.cancel()  # the pipeline ignores a late confirm
        return MoveFailedError("no confirm in time")
    if confirmation.cancelled():
        return MoveFailedError("the channel closed while awaiting the confirm")
    error = confirmation.exception()
    if isinstance(error, DeliveryError):
        return MoveFailedError("RabbitMQ nacked it")
    if error is not None:
        return MoveFailedError(f"{type(error).__name__} awaiting the confirm")
    if not isinstance(confirmation.result(), Basic.Ack):
        return MoveFailedError("RabbitMQ returned it")
    return None


def _encodable(value: Any) -> Any:
    """A header value pamqp can write back: it reads some values it cannot encode again."""
    if isinstance(value, bytes):
        return bytearray(value)  # pamqp writes bytearray as a byte array, not bytes
    if isinstance(value, float) and (not math.isfinite(value) or abs(value) > _FLOAT32_MAX):
        return str(value)  # pamqp re-encodes doubles as 32-bit floats
    if isinstance(value, dict):
        return {str(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        return str(value)
    return value


def fit_headers(
    headers: Mapping[str, Any], max_table_bytes: int = MAX_HEADER_TABLE_BYTES
) -> dict[str, Any]:
    """Headers ready to publish: encodable, and within one frame (trimming our own text first)."""
    fitted = {str(k): _encodable(v) for k, v in headers.items()}
    for trimmable in (ERROR_TRACEBACK, ERROR_MESSAGE):
        if len(encode.field_table(fitted)) <= max_table_bytes:
            return fitted
        fitted.pop(trimmable, None)
    if len(encode.field_table(fitted)) > max_table_bytes:
        raise UncopyableMessageError("the message's own headers leave no room in one AMQP frame")
    return fitted


def fit_to_frame(message: WireMessage, frame_max: int) -> WireMessage:
    """`message` with headers that keep its content header frame within `frame_max` bytes (0: no
    limit but ours); raises UncopyableMessageError when even the trimmed headers do not fit."""
    budget = MAX_HEADER_TABLE_BYTES
    if frame_max > 0:
        without_headers = len(content_header_frame(0, dataclasses.replace(message, headers=None)))
        budget = min(budget, frame_max - without_headers)
    return dataclasses.replace(message, headers=fit_headers(message.headers or {}, budget))


class Mover(Protocol):
    """What the settler and the reporter publish through: RabbitMQ's `MessageMover`, or an
    in-memory stand-in (consumers.testing)."""

    async def copy(
        self,
        message: Inbound,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """A copy of `message` with `headers`, confirmed; else raise MoveFailedError."""

    async def announce_many(
        self, messages: Sequence[tuple[WireMessage, str]], *, exchange: str
    ) -> list[MoveFailedError | None]:
        """Each (message, routing key) published to `exchange`: what became of each."""


def copy_of(message: Inbound, headers: dict[str, Any]) -> WireMessage:
    """The copy of `message` with new `headers` that a move publishes; raises
    UncopyableMessageError for a message that cannot be written again."""
    try:
        return WireMessage(
            message.body,
            headers={str(name): _encodable(value) for name, value in headers.items()},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            priority=message.priority,
            timestamp=None if message.timestamp is None else int(message.timestamp.timestamp()),
            type=message.type,
            app_id=message.app_id,
            # No expiration: a copy in a retry tier or DLQ must not vanish on its own.
            delivery_mode=2,  # persistent
        )
    except _UNENCODABLE as error:
        raise UncopyableMessageError(f"cannot re-encode the message: {error}") from None


class MessageMover:
    def __init__(self, channel: AbstractChannel, *, timeout: float) -> None:
        # Opened with publisher_confirms=True, and publishing nothing but the mover's copies.
        self._pipeline = ChannelPipeline(channel)
        self._timeout = timeout
        self._same_id = SameIdGate()

    async def copy(
        self,
        message: Inbound,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a copy of `message` with new headers; return only once RabbitMQ confirmed it.

        Raises MoveFailedError, and nothing else, for any reason the copy is not confirmed.
        """
        copy = copy_of(message, headers)
        await self._publish_copy(copy, exchange=exchange, routing_key=routing_key)

    async def _publish_copy(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """Publish `message`, mandatory; return once RabbitMQ confirmed it, else raise
        MoveFailedError."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with (
                asyncio.timeout_at(deadline) as scope,
                self._same_id.turn(message.message_id),
            ):
                pipeline = await self._pipeline.current()
                scope.reschedule(None)  # the confirm's own wait keeps the deadline
                confirmation = await settle_by(
                    pipeline.publish(
                        fit_to_frame(message, pipeline.frame_max),
                        exchange=exchange,
                        routing_key=routing_key,
                        mandatory=True,
                    ),
                    deadline,
                )
        except DeliveryError:
            raise MoveFailedError(f"RabbitMQ nacked the copy to {routing_key!r}") from None
        except _UNREACHABLE as error:
            raise MoveFailedError(f"{type(error).__name__} moving to {routing_key!r}") from None
        except _UNENCODABLE as error:
            # Headers another publisher sent that cannot be written back as they are.
            raise UncopyableMessageError(f"cannot re-encode the message: {error}") from None
        if not isinstance(confirmation, Basic.Ack):
            raise CopyRefusedError(f"RabbitMQ returned the copy: no queue for {routing_key!r}")

    async def announce_many(
        self, messages: Sequence[tuple[WireMessage, str]], *, exchange: str
    ) -> list[MoveFailedError | None]:
        """Publish each (message, routing key) to `exchange`, not mandatory (completion events),
        in one pass under one timeout: what became of each (None: confirmed).

        Not mandatory, so no `basic.return` can come back and ids need no turns (see
        producers.same_id).
        """
        if not messages:
            return []  # nothing to wait for, not even a channel being restored
        outcomes: list[MoveFailedError | None] = [None] * len(messages)
        confirmations: list[asyncio.Future[Any] | None] = [None] * len(messages)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                pipeline = await self._pipeline.current()
        except _UNREACHABLE as error:
            return [MoveFailedError(f"{type(error).__name__} publishing to {exchange!r}")] * len(
                messages
            )
        for index, (message, routing_key) in enumerate(messages):
            try:
                confirmations[index] = pipeline.publish(
                    message, exchange=exchange, routing_key=routing_key, mandatory=False
                )
            except _UNPUBLISHABLE as error:
                outcomes[index] = MoveFailedError(f"{type(error).__name__} publishing")
        waiting = [confirmation for confirmation in confirmations if confirmation is not None]
        if waiting:
            await wait_by(waiting, deadline)
        for index, confirmation in enumerate(confirmations):
            if confirmation is not None:
                outcomes[index] = _announce_outcome(confirmation)
        return outcomes
