"""Deliveries taken straight from aiormq's channel: one task each, no aio-pika message.

aio-pika hands each delivery to a consumer through two tasks (aiormq's, tracked in the channel's
future store, and aio-pika's own around the callback) and an `IncomingMessage`, whose
constructor copies and converts every property: much of a cheap handler's delivery cost.
`DeliveryHook` replaces the delivery handler of the consumer's aiormq channel (through
`producers.amqp_internals`, which checks at start that aiormq has one): a delivery to one of the
hooked consumer tags becomes a `Delivery` (the message's fields, read as needed) and one task;
deliveries to any other consumer go on exactly as aiormq does it. The body is read from its
frames here, as aiormq reads it but without its `BytesIO` and `DeliveredMessage` (a body in one
frame is that frame's bytes, uncopied); aiormq's message is made only for the other consumers.
As aiormq does with its own, the tasks of a channel are cancelled when the channel closes: the
broker has their deliveries back.

The consumer stays registered through aio-pika, so a reconnect restores it as before. A
restored channel is a new aiormq channel: its first deliveries come the aio-pika way, and the
consumer hooks the channel when it sees one of them (`hook`). Only unordered subscriptions are
hooked: while a channel is being switched, a delivery on the fast path can overtake one still
on aio-pika's, which an ordered subscription must never see.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Collection, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol

import aiormq
import structlog
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from producers.amqp_internals import (
    consumer_callbacks,
    consumer_done_callback,
    frame_reader,
    install_delivery_handler,
)

__all__ = ["Delivery", "DeliveryHook", "Inbound"]

_log = structlog.get_logger(component="consumer")


class Inbound(Protocol):
    """What conveyor reads of a delivery: aio-pika's `IncomingMessage` or a `Delivery`."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def timestamp(self) -> datetime | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def app_id(self) -> str | None: ...
    @property
    def delivery_tag(self) -> int | None: ...
    @property
    def redelivered(self) -> bool | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def channel(self) -> aiormq.abc.AbstractChannel: ...

    async def nack(self, *, requeue: bool = True) -> None: ...
    async def reject(self, *, requeue: bool = False) -> None: ...


class Delivery:
    """One delivery as aiormq read it; reads like aio-pika's `IncomingMessage`."""

    __slots__ = (
        "_channel",
        "_properties",
        "body",
        "delivery_tag",
        "exchange",
        "headers",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        frame: spec.Basic.Deliver,
        properties: spec.Basic.Properties,
        body: bytes,
        channel: aiormq.abc.AbstractChannel,
    ) -> None:
        self._channel = channel
        self._properties = properties
        self.body: bytes = body
        self.headers: Mapping[str, Any] = properties.headers or {}
        self.delivery_tag: int | None = frame.delivery_tag
        self.redelivered: bool | None = frame.redelivered
        self.exchange: str | None = frame.exchange
        self.routing_key: str | None = frame.routing_key

    @property
    def content_type(self) -> str | None:
        return self._properties.content_type

    @property
    def content_encoding(self) -> str | None:
        return self._properties.content_encoding

    @property
    def message_id(self) -> str | None:
        return self._properties.message_id or None  # as aio-pika reads it: "" is None

    @property
    def correlation_id(self) -> str | None:
        return self._properties.correlation_id or None  # as aio-pika reads it: "" is None

    @property
    def reply_to(self) -> str | None:
        return self._properties.reply_to or None  # as aio-pika reads it: "" is None

    @property
    def priority(self) -> int | None:
        return self._properties.priority or 0  # as aio-pika reads it

    @property
    def timestamp(self) -> datetime | None:
        return self._properties.timestamp

    @property
    def type(self) -> str | None:
        return self._properties.message_type or None  # as aio-pika reads it: "" is None

    @property
    def app_id(self) -> str | None:
        return self._properties.app_id or None  # as aio-pika reads it: "" is None

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """Raises ChannelInvalidStateError once the channel closed, as aio-pika's does."""
        if self._channel.is_closed:
            raise ChannelInvalidStateError
        return self._channel

    async def nack(self, *, requeue: bool = True) -> None:
        if self.delivery_tag is not None:
            await self.channel.basic_nack(self.delivery_tag, requeue=requeue)

    async def reject(self, *, requeue: bool = False) -> None:
        if self.delivery_tag is not None:
            await self.channel.basic_reject(self.delivery_tag, requeue=requeue)


class DeliveryHook:
    """Runs `handle(delivery)` in a task of its own for each delivery to `consumer_tags`."""

    def __init__(
        self,
        consumer_tags: Collection[str],
        handle: Callable[[Delivery], Coroutine[Any, Any, None]],
        *,
        name: str,
    ) -> None:
        self._tags = frozenset(consumer_tags)
        self._handle = handle
        self._name = name
        self._hooked: weakref.WeakSet[aiormq.Channel] = weakref.WeakSet()

    def hook(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Take the deliveries of `channel` from now on (once per channel; an open one only)."""
        if not isinstance(channel, aiormq.Channel) or channel.is_closed:
            return
        if channel not in self._hooked:
            self._hooked.add(channel)
            # Kept alive by the channel, which holds its delivery handler.
            _HookedChannel(channel, self._tags, self._handle, self._name)


class _HookedChannel:
    """One aiormq channel whose deliveries to `tags` run as `handle(delivery)` tasks."""

    def __init__(
        self,
        channel: aiormq.Channel,
        tags: frozenset[str],
        handle: Callable[[Delivery], Coroutine[Any, Any, None]],
        name: str,
    ) -> None:
        self._channel = channel
        self._tags = tags
        self._handle = handle
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_frame = frame_reader(channel)
        self._consumers = consumer_callbacks(channel)
        self._consumer_done = consumer_done_callback(channel)
        install_delivery_handler(channel, self._on_deliver_frame)
        channel.closing.add_done_callback(self._cancel_all)

    async def _on_deliver_frame(self, frame: spec.Basic.Deliver) -> None:
        channel = self._channel
        # As aiormq's own: the content header, then the body frames.
        header = await self._next_frame()
        if not isinstance(header, ContentHeader):
            raise TypeError(f"Unexpected frame {header!r} instead of ContentHeader", header)
        body = await self._read_body(header.body_size or 0)
        if frame.consumer_tag in self._tags:
            task = asyncio.get_running_loop().create_task(
                self._handle(Delivery(frame, header.properties, body, channel)), name=self._name
            )
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            return
        consumer = self._consumers.get(frame.consumer_tag or "")
        if consumer is not None:
            message = DeliveredMessage(delivery=frame, header=header, body=body, channel=channel)
            other = channel.create_task(consumer(message))
            other.add_done_callback(self._consumer_done)

    async def _read_body(self, size: int) -> bytes:
        """The body frames after a content header, up to its `size`, as aiormq reads them."""
        if not size:
            return b""
        value = await self._next_body_part()
        if len(value) >= size or not value:
            return value
        parts, read = [value], len(value)
        while read < size:
            value = await self._next_body_part()
            if not value:
                break
            parts.append(value)
            read += len(value)
        return b"".join(parts)

    async def _next_body_part(self) -> bytes:
        frame = await self._next_frame()
        if not isinstance(frame, ContentBody):
            raise TypeError(f"Unexpected frame {frame!r} instead of ContentBody", frame)
        return frame.value

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("delivery task failed", exc_info=error)

    def _cancel_all(self, closed: asyncio.Future[Any]) -> None:
        if not closed.cancelled():
            closed.exception()  # retrieved here; the channel's own close reports it
        for task in list(self._tasks):
            task.cancel()
