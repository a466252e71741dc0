"""Reading the archive's stream from a point in time, over AMQP 0-9-1.

A stream consumer needs a prefetch and manual acks; `x-stream-offset` places it at a timestamp
(whole seconds, and then at the start of the chunk holding it, so a little earlier) or at an
offset. A read ends, so a browse never hangs: at the window's end (an event past `until`), at a
limit the caller sets, or at the stream's end. Over AMQP 0-9-1 RabbitMQ 3.10 tells neither the
committed offset nor a count (a stream's `queue.declare-ok` says 0 messages), so the end is known
thus: no message for `idle` seconds, and a second consumer placed at `last` finds nothing later
in the stream's last chunk than what was read.
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
# A read that paused this often at a stream whose last chunk is further along gives up there.
MAX_PAUSES = 30
_REST_OF_CHUNK_SECONDS = 0.2


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
    after `after_offset`, in order, to the stream's end. The caller stops earlier by leaving the
    loop; the consumer goes with the channel, which the caller owns.

    The end: no event for `idle` seconds, and the stream's last chunk holds nothing later than
    what was read (a loaded broker may pause longer than `idle` mid-stream; then the read goes
    on, at most `MAX_PAUSES` times)."""
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
    last_read = -1 if after_offset is None else after_offset
    pauses = 0
    try:
        while True:
            try:
                message = await asyncio.wait_for(arrived.get(), idle)
            except TimeoutError:
                pauses += 1
                newest = await _newest(stream, idle)
                if newest is None or newest.offset <= last_read or pauses > MAX_PAUSES:
                    return
                continue
            await message.ack()
            event = _read(message)
            if event is None or event.offset <= last_read:
                continue
            last_read = event.offset
            yield event
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
    newest = await _newest(await _stream(channel, topology), idle)
    return oldest, newest if newest is not None and newest.offset >= oldest.offset else oldest


async def _newest(stream: AbstractQueue, wait: float) -> ArchivedEvent | None:
    """The last event of the stream's last chunk, read by a consumer of its own placed at
    `last`: the chunk comes at once, so a short wait after its first message is enough."""
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await stream.consume(arrived.put, no_ack=False, arguments={STREAM_OFFSET: "last"})
    newest: ArchivedEvent | None = None
    try:
        while True:
            try:
                message = await asyncio.wait_for(
                    arrived.get(), wait if newest is None else _REST_OF_CHUNK_SECONDS
                )
            except TimeoutError:
                return newest
            await message.ack()
            event = _read(message)
            if event is not None and (newest is None or event.offset > newest.offset):
                newest = event
    finally:
        with contextlib.suppress(Exception):
            await stream.cancel(tag)


def _read(message: AbstractIncomingMessage) -> ArchivedEvent | None:
    offset = message.headers.get(STREAM_OFFSET) if message.headers else None
    if not isinstance(offset, int):
        return None
    return archived_event(
        offset,
        message.body,
        message.headers,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        routing_key=message.routing_key or "",
        timestamp=message.timestamp,
    )


async def _stream(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    try:
        return await channel.declare_queue(topology.archive, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise ArchiveOffError(f"no archive stream {topology.archive}") from None
