"""Reading the archive's stream from a point in time, over AMQP 0-9-1.

A stream consumer needs a prefetch and manual acks; `x-stream-offset` places it at a timestamp
(whole seconds, and then at the start of the chunk holding it, so a little earlier) or at an
offset. A read ends, so a browse never hangs: at the window's end (an event past `until`), at a
limit the caller sets, or at the stream's end, known as no message for `idle` seconds: over AMQP
0-9-1 RabbitMQ 3.10 tells neither the committed offset nor a count (a stream's
`queue.declare-ok` says 0 messages).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from producers.topology import Topology
from service.archive.events import STREAM_OFFSET, ArchivedEvent, archived_event

__all__ = ["ArchiveOffError", "first_and_last", "read_archive"]

PREFETCH = 256


class ArchiveOffError(LookupError):
    """No archive stream in this namespace: CONVEYOR_ARCHIVE is not set (or never was)."""


async def read_archive(
    channel: AbstractChannel,
    topology: Topology,
    *,
    since: float | None,
    after_offset: int | None = None,
    idle: float,
) -> AsyncGenerator[ArchivedEvent]:
    """Each archived event from `since` (Unix seconds; None: the stream's first), or from just
    after `after_offset`, in order, until no event comes for `idle` seconds. The caller stops
    earlier by leaving the loop; the consumer goes with the channel, which the caller owns."""
    start: int | datetime | str
    if after_offset is not None:
        start = after_offset + 1
    elif since is not None:
        start = datetime.fromtimestamp(int(since), UTC)
    else:
        start = "first"
    stream = await _stream(channel, topology)
    await channel.set_qos(prefetch_count=PREFETCH)
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await stream.consume(arrived.put, no_ack=False, arguments={STREAM_OFFSET: start})
    try:
        while True:
            try:
                message = await asyncio.wait_for(arrived.get(), idle)
            except TimeoutError:
                return
            offset = message.headers.get(STREAM_OFFSET) if message.headers else None
            await message.ack()
            if not isinstance(offset, int) or (after_offset is not None and offset <= after_offset):
                continue
            yield archived_event(
                offset,
                message.body,
                message.headers,
                content_type=message.content_type,
                correlation_id=message.correlation_id,
                message_id=message.message_id,
                routing_key=message.routing_key or "",
                timestamp=message.timestamp,
            )
    finally:
        with contextlib.suppress(Exception):
            await stream.cancel(tag)


async def first_and_last(
    channel: AbstractChannel, topology: Topology, *, idle: float
) -> tuple[ArchivedEvent | None, ArchivedEvent | None]:
    """The oldest event the archive still holds and the newest (read from the last chunk)."""
    oldest = None
    events = read_archive(channel, topology, since=None, idle=idle)
    async with contextlib.aclosing(events):
        async for event in events:
            oldest = event
            break
    if oldest is None:
        return None, None
    newest = oldest
    stream = await _stream(channel, topology)
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await stream.consume(arrived.put, no_ack=False, arguments={STREAM_OFFSET: "last"})
    try:
        # The last chunk comes at once; a short wait after its first message is enough.
        while True:
            try:
                message = await asyncio.wait_for(arrived.get(), idle if newest is oldest else 0.2)
            except TimeoutError:
                break
            await message.ack()
            offset = message.headers.get(STREAM_OFFSET) if message.headers else None
            if isinstance(offset, int) and offset >= newest.offset:
                newest = archived_event(
                    offset,
                    message.body,
                    message.headers,
                    content_type=message.content_type,
                    message_id=message.message_id,
                    routing_key=message.routing_key or "",
                    timestamp=message.timestamp,
                )
    finally:
        with contextlib.suppress(Exception):
            await stream.cancel(tag)
    return oldest, newest


async def _stream(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    try:
        return await channel.declare_queue(topology.archive, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise ArchiveOffError(f"no archive stream {topology.archive}") from None
