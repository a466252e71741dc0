"""Acking finished deliveries in few frames.

Delivery tags count up per channel from 1. One basic.ack with `multiple` set settles every
delivery of the channel still unsettled with a tag up to its own, so it is sent only for a run
of tags each known here to be finished (its handler returned, its status and completion were
handled) or already settled by a frame queued ahead of it (a nack, a reject, a single ack). A tag
this coalescer was not told about stops the run: a delivery whose task has not started, or that
is still being handled, is never covered. Finished deliveries past such a gap are acked one by
one, in the same flush, so an ack never waits for a slow neighbour.

Acks go out on the next turn of the event loop: deliveries that finish in the same turn share a
frame, and only one flush per channel runs at a time, so a multiple ack never overtakes a frame
it depends on. A channel that closes takes its unsent acks with it: the broker redelivers those
deliveries (duplicates, which deduplication skips), it never loses them.
"""

from __future__ import annotations

import asyncio

import structlog
from aiormq.abc import AbstractChannel

from consumers.delivery import Inbound
from producers.publisher import BROKER_FAILURES

__all__ = ["AckCoalescer"]

_log = structlog.get_logger(component="consumer")


class _ChannelAcks:
    """What one channel's deliveries need acked, and how far the channel is settled."""

    __slots__ = ("acked_through", "channel", "finished", "flushing", "settled")

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.acked_through = 0  # every tag up to this one is settled on the broker
        self.finished: set[int] = set()  # handled, ack not sent yet
        self.settled: set[int] = set()  # past acked_through, settled by a frame already queued
        self.flushing = False

    def take(self) -> tuple[int | None, list[int]]:
        """The tag to ack with `multiple` (None: no run), and the tags to ack one by one."""
        tag = self.acked_through + 1
        highest: int | None = None
        while True:
            if tag in self.finished:
                self.finished.remove(tag)
                highest = tag
            elif tag in self.settled:
                self.settled.remove(tag)
            else:
                break
            tag += 1
        self.acked_through = tag - 1
        singles = sorted(self.finished)
        self.finished.clear()
        # Queued below before any later flush runs: a later run may pass over them.
        self.settled.update(singles)
        return highest, singles


class AckCoalescer:
    """Acks one consumer's finished deliveries, per channel, in as few frames as it can."""

    def __init__(self) -> None:
        self._channels: dict[AbstractChannel, _ChannelAcks] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    def ack(self, message: Inbound) -> None:
        """Ack `message` on the next turn of the loop. Raises ChannelInvalidStateError (one of
        BROKER_FAILURES) when its channel is closed already."""
        acks = self._acks_of(message.channel)
        tag = message.delivery_tag
        if tag is None:  # a delivery without a tag was consumed with no_ack: nothing to settle
            return
        acks.finished.add(tag)
        if not acks.flushing:
            acks.flushing = True
            flush = asyncio.create_task(self._flush(acks), name="conveyor-acks")
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    def settled(self, message: Inbound) -> None:
        """`message` was settled by a frame of its own (nack, reject), queued already: later
        runs may pass over its tag."""
        tag = message.delivery_tag
        try:
            channel = message.channel
        except BROKER_FAILURES:
            return  # the channel is gone, and what was known about it with it
        if tag is not None:
            self._acks_of(channel).settled.add(tag)

    async def flush(self) -> None:
        """Return once every ack asked for so far is handed to the connection (shutdown)."""
        while self._flushes:
            await asyncio.wait(set(self._flushes))

    def _acks_of(self, channel: AbstractChannel) -> _ChannelAcks:
        acks = self._channels.get(channel)
        if acks is None:
            # A new channel (the first, or one reopened after a reconnect): tags start over.
            # Closed channels are forgotten; the broker took their unsettled deliveries back.
            for closed in [known for known in self._channels if known.is_closed]:
                del self._channels[closed]
            acks = self._channels[channel] = _ChannelAcks(channel)
        return acks

    async def _flush(self, acks: _ChannelAcks) -> None:
        try:
            while acks.finished:
                highest, singles = acks.take()
                if highest is not None:
                    await acks.channel.basic_ack(highest, multiple=True, wait=False)
                for tag in singles:
                    await acks.channel.basic_ack(tag, wait=False)
        except BROKER_FAILURES as error:
            # The channel is gone: the broker requeues what it did not get an ack for.
            _log.warning(
                "could not ack deliveries; the broker will redeliver them",
                error_class=type(error).__name__,
            )
            self._channels.pop(acks.channel, None)
        finally:
            acks.flushing = False
