"""Many publishes per socket write, each still confirmed on its own.

aio-pika's `Exchange.publish` turns a `Message` into pamqp properties, marshals three frames,
takes the channel's lock and queues the frame set for the connection's writer, which sends it
(one `send` per message) and drains. Here the frames are written by `producers.frames`, the
method frame is cached per destination, and every publish made while the previous write was
waiting to go out leaves in one frame set, so one `send` carries as many messages as arrived.

Each publish still has its own delivery tag and its own confirmation future, registered in
aiormq's channel exactly as `Channel.basic_publish` registers them (through
`producers.amqp_internals`, which lists what that reaches into), so aiormq settles them:
`basic.ack` (with `multiple`) and `basic.nack` by tag, `basic.return` by message id, and a
closed channel fails every one still waiting. The channel must be this pipeline's alone: its
delivery tags are counted here, in the order the frames are queued.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
import structlog
from aio_pika.abc import AbstractChannel
from aiormq.abc import ChannelFrame, ConfirmationFrameType
from pamqp.commands import Basic

from producers.amqp_internals import (
    body_frame_max,
    channel_frame_max,
    confirmation_settler,
    confirmation_store,
    frame_queue,
    install_confirm_handler,
    returned_message_tags,
)
from producers.frames import WireMessage, body_frames, content_header_frame, publish_method_frame

__all__ = ["ChannelPipeline", "ConfirmPipeline"]

_METHOD_CACHE_SIZE = 1024  # destinations (exchange, routing key, mandatory) kept marshalled
_log = structlog.get_logger(component="publisher")


def _is_ack(frame: ConfirmationFrameType) -> bool:
    return isinstance(frame, Basic.Ack)


class ConfirmPipeline:
    """Publishes on one confirm-mode aiormq channel, batching writes, confirming one by one."""

    def __init__(self, channel: aiormq.Channel) -> None:
        if not channel.publisher_confirms:
            raise ValueError("a ConfirmPipeline needs a channel in confirm mode")
        self.channel = channel
        self._number = channel.number
        self._max_body_frame = body_frame_max(channel)
        # The largest frame the broker takes (0: no limit); past it RabbitMQ closes the whole
        # connection, every channel on it with it.
        self.frame_max: int = channel_frame_max(channel)
        self._confirmations = confirmation_store(channel)
        self._returned_tags = returned_message_tags(channel)
        self._confirm_delivery = confirmation_settler(channel)
        self._frame_queue = frame_queue(channel)
        self._last_tag = 0  # the channel is this pipeline's alone: its tags are counted here
        self._methods: dict[tuple[str, str, bool], bytes] = {}
        self._pending: list[bytes] = []
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._writer = self._loop.create_task(self._write_batches())
        self._message_ids: dict[int, str] = {}  # tag -> message id, for mandatory publishes
        self._confirmed_upto = 0  # every tag up to here was covered by a `multiple` confirm
        # A closed channel takes no more frames: stop the writer (whose put could wait forever)
        # and fail every confirmation still waiting.
        channel.closing.add_done_callback(self._on_channel_closed)
        # aiormq answers a `multiple` confirm by scanning every waiting confirmation and
        # scheduling a callback for each one it covers: with hundreds in flight that scan ran
        # for every confirm frame. This walks each tag once (the channel is this pipeline's alone).
        install_confirm_handler(channel, self._on_confirm_frame)

    @property
    def usable(self) -> bool:
        return not self.channel.is_closed and not self._writer.done()

    def publish(
        self, message: WireMessage, *, exchange: str, routing_key: str, mandatory: bool
    ) -> asyncio.Future[Any]:
        """Queue `message` and return its confirmation: a `Basic.Ack`, a returned message, or
        an exception (`DeliveryError` on a nack, the channel's error once it closed).

        Synchronous up to the returned future, so concurrent callers' frames and delivery tags
        are in the same order. Raises ValueError, before anything is queued, for a message that
        cannot be written (a short string over 255 bytes, a header pamqp cannot encode, headers
        that do not fit one frame).
        """
        if not self.usable:
            raise aiormq.exceptions.ChannelInvalidStateError("the publishing channel is closed")
        header = content_header_frame(self._number, message)
        if 0 < self.frame_max < len(header):
            raise ValueError(
                f"the message's properties and headers take {len(header)} bytes, more than "
                f"one frame ({self.frame_max})"
            )
        frames = (
            self._method(exchange, routing_key, mandatory=mandatory)
            + header
            + body_frames(self._number, message.body, self._max_body_frame)
        )
        self._last_tag += 1
        tag = self._last_tag
        # A plain future, not aiormq's `create_future`: that one registers each future in the
        # channel's and the connection's stores with three done callbacks, about a fifth of a
        # publish's cost; `_on_channel_closed` fails what is still waiting instead.
        confirmation: asyncio.Future[Any] = self._loop.create_future()
        self._confirmations[tag] = confirmation
        if mandatory and message.message_id is not None:
            # aiormq finds a returned message's confirmation by its message id.
            self._returned_tags[message.message_id] = tag
            self._message_ids[tag] = message.message_id
        self._pending.append(frames)
        self._ready.set()
        return confirmation

    def close(self) -> None:
        self._writer.cancel()

    async def _on_confirm_frame(self, frame: ConfirmationFrameType) -> None:
        last = frame.delivery_tag or 0
        if not getattr(frame, "multiple", False):
            self._settle(last, frame)
            return
        for tag in range(self._confirmed_upto + 1, last + 1):
            self._settle(tag, frame)
        self._confirmed_upto = max(self._confirmed_upto, last)

    def _settle(self, tag: int, frame: ConfirmationFrameType) -> None:
        waiting = self._confirmations.get(tag)
        self._confirm_delivery(tag, frame)
        message_id = self._message_ids.pop(tag, None)
        if message_id is not None and self._returned_tags.get(message_id) == tag:
            del self._returned_tags[message_id]
        if isinstance(waiting, asyncio.Future) and waiting.cancelled() and _is_ack(frame):
            # Its publisher stopped waiting (a timeout, a cancelled request) and reported a
            # failure: say that RabbitMQ has the message after all.
            _log.warning(
                "RabbitMQ confirmed a message after its publish was given up; it was published",
                message_id=message_id,
                delivery_tag=tag,
            )

    def _on_channel_closed(self, closing: asyncio.Future[Any]) -> None:
        self.close()
        reason = None if closing.cancelled() else closing.exception()
        # aiormq also keeps `Returning` markers there, whatever its annotation says.
        entries: list[object] = list(self._confirmations.values())
        for confirmation in entries:
            if isinstance(confirmation, asyncio.Future) and not confirmation.done():
                confirmation.set_exception(
                    aiormq.exceptions.ChannelInvalidStateError(f"channel closed: {reason!r}")
                )
        self._message_ids.clear()

    def _method(self, exchange: str, routing_key: str, *, mandatory: bool) -> bytes:
        key = (exchange, routing_key, mandatory)
        method = self._methods.get(key)
        if method is None:
            if len(self._methods) >= _METHOD_CACHE_SIZE:
                self._methods.clear()
            method = publish_method_frame(self._number, exchange, routing_key, mandatory=mandatory)
            self._methods[key] = method
        return method

    async def _write_batches(self) -> None:
        """One frame set per batch; the next batch gathers while this one waits to go out."""
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            written = loop.create_future()
            # The connection's write queue is bounded: waiting here is the backpressure.
            await self._frame_queue.put(
                ChannelFrame(payload=b"".join(batch), should_close=False, drain_future=written)
            )
            await written


class ChannelPipeline:
    """The ConfirmPipeline of a robust aio-pika channel, following it across reconnects."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel  # opened with publisher_confirms=True, and used for nothing else
        self._pipeline: ConfirmPipeline | None = None

    async def current(self) -> ConfirmPipeline:
        """The pipeline on the channel's present underlay; raises ChannelInvalidStateError
        while the channel is not open."""
        underlay = cast("aiormq.Channel", await self.channel.get_underlay_channel())
        if self._pipeline is None or self._pipeline.channel is not underlay:
            # A reconnect gave the robust channel a new underlay: delivery tags start again.
            if self._pipeline is not None:
                self._pipeline.close()
            self._pipeline = ConfirmPipeline(underlay)
        return self._pipeline

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
