"""AckCoalescer: which ack frames finished deliveries become (pure logic, a recording channel)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from aio_pika.abc import AbstractIncomingMessage

from consumers.acking import AckCoalescer


@dataclass(eq=False)
class RecordingChannel:
    acks: list[tuple[int, bool]] = field(default_factory=list)
    is_closed: bool = False

    async def basic_ack(self, tag: int, *, multiple: bool = False, wait: bool = True) -> None:
        assert not wait  # the coalescer must not wait for the write
        self.acks.append((tag, multiple))


@dataclass
class Delivery:
    channel: RecordingChannel
    delivery_tag: int


def _message(channel: RecordingChannel, tag: int) -> AbstractIncomingMessage:
    return cast("AbstractIncomingMessage", Delivery(channel, tag))


async def _settle_turns() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_deliveries_finished_in_one_turn_share_one_multiple_ack() -> None:
    channel, acks = RecordingChannel(), AckCoalescer()
    for tag in (2, 1, 3):
        acks.ack(_message(channel, tag))
    await acks.flush()
    assert channel.acks == [(3, True)]


async def test_a_delivery_still_running_is_never_covered_by_a_multiple_ack() -> None:
    channel, acks = RecordingChannel(), AckCoalescer()
    acks.ack(_message(channel, 1))
    acks.ack(_message(channel, 3))  # 2 is still being handled
    await acks.flush()
    assert channel.acks == [(1, True), (3, False)]
    acks.ack(_message(channel, 2))
    acks.ack(_message(channel, 4))
    await acks.flush()
    # 3 was acked alone already: the run passes over it, up to 4.
    assert channel.acks[2:] == [(4, True)]


async def test_a_nacked_delivery_is_passed_over_not_acked() -> None:
    channel, acks = RecordingChannel(), AckCoalescer()
    acks.settled(_message(channel, 2))  # a nack or reject of its own went out first
    acks.ack(_message(channel, 1))
    acks.ack(_message(channel, 3))
    await acks.flush()
    assert channel.acks == [(3, True)]


async def test_a_new_channel_starts_its_tags_over() -> None:
    first, acks = RecordingChannel(), AckCoalescer()
    acks.ack(_message(first, 1))
    await acks.flush()
    first.is_closed = True  # a reconnect: the broker took back what was unacked there
    second = RecordingChannel()
    acks.ack(_message(second, 1))
    acks.ack(_message(second, 2))
    await acks.flush()
    assert first.acks == [(1, True)]
    assert second.acks == [(2, True)]


async def test_acks_asked_for_while_a_flush_writes_go_out_in_the_next() -> None:
    channel, acks = RecordingChannel(), AckCoalescer()
    acks.ack(_message(channel, 1))
    await _settle_turns()
    acks.ack(_message(channel, 2))
    acks.ack(_message(channel, 3))
    await acks.flush()
    assert channel.acks == [(1, True), (3, True)]
