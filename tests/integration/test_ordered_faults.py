"""Ordered subscriptions across a lost connection: a handler that outlives its channel keeps its
key, so the redelivery of its event and of the later ones of its key wait behind it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import defaultdict
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage

from consumers import Event
from consumers.pipeline import DeliveryPipeline
from consumers.retry import RetryPolicy
from service import Role
from tests.conftest import StartConveyor, url_with_port
from tests.support.namespace import Namespace
from tests.support.ordering import KeyedRecorder, ordered, publish_keys
from tests.support.proxy import FaultProxy
from tests.support.waiting import eventually


@dataclasses.dataclass
class Call:
    index: int
    started: float
    finished: float | None = None


class Invocations:
    """Every handler invocation per key, from its start to the moment its work really ended.

    The first invocation of `slow` works in a thread, as a handler around a blocking client
    does: cancelling the coroutine that awaits it leaves the thread running on.
    """

    def __init__(self, slow: tuple[str, int], slow_seconds: float) -> None:
        self.calls: dict[str, list[Call]] = defaultdict(list)
        self.redelivered: set[tuple[str, int]] = set()
        self.slow = slow
        self.slow_seconds = slow_seconds
        self.slow_started = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        key = event.extensions["partitionkey"]
        index = int(event.data["index"])
        call = Call(index, time.monotonic())
        self.calls[key].append(call)
        if event.redelivered:
            self.redelivered.add((key, index))
        if (key, index) == self.slow and not self.slow_started.is_set():
            self.slow_started.set()
            await asyncio.to_thread(self._work, call)
            return
        try:
            await asyncio.sleep(0.005)
        finally:
            call.finished = time.monotonic()

    def _work(self, call: Call) -> None:
        time.sleep(self.slow_seconds)
        call.finished = time.monotonic()

    def overlaps(self) -> list[str]:
        found = []
        for key, calls in self.calls.items():
            ordered_calls = sorted(calls, key=lambda call: call.started)
            for before, after in itertools.pairwise(ordered_calls):
                assert before.finished is not None
                if after.started < before.finished:
                    found.append(f"{key}: {after.index} started while {before.index} ran")
        return found

    def first_starts(self, key: str) -> list[int]:
        """Each event's first start, in the order they started."""
        by_start = sorted(self.calls[key], key=lambda call: call.started)
        return list(dict.fromkeys(call.index for call in by_start))


@pytest.mark.parametrize("deduplicate", [False, True], ids=["rerun", "deduplicated"])
async def test_a_handler_outliving_its_connection_keeps_its_key(
    start_conveyor: StartConveyor,
    namespace: Namespace,
    proxy: FaultProxy,
    amqp_url: str,
    *,
    deduplicate: bool,
) -> None:
    keys, per_key = 3, 5
    calls = Invocations(slow=("k0", 1), slow_seconds=3.0)
    sub = dataclasses.replace(
        ordered("ordered", calls, retry=RetryPolicy(1, ()), partitions=2),
        deduplicate=deduplicate,
    )
    # A backlog first (not through the proxy), so the whole tail of k0 sits in the worker's
    # prefetch window, behind the slow event, when the connection goes.
    ingress = await start_conveyor((sub,), role=Role.INGRESS)
    await publish_keys(ingress, keys=keys, per_key=per_key)
    await start_conveyor(
        (sub,), role=Role.WORKER, amqp_url_override=url_with_port(amqp_url, proxy.port)
    )

    async with asyncio.timeout(15):
        await calls.slow_started.wait()
    proxy.cut_all()  # the broker hands the unacked tail back; conveyor reconnects at once

    async def all_done() -> bool:
        finished = all(c.finished is not None for key in calls.calls.values() for c in key)
        every_event = all(
            set(calls.first_starts(f"k{number}")) == set(range(per_key)) for number in range(keys)
        )
        return finished and every_event

    await eventually(all_done, timeout=30, what="every event handled after the reconnect")
    assert calls.overlaps() == []
    for number in range(keys):
        assert calls.first_starts(f"k{number}") == list(range(per_key))
    # The tail of k0 did come back on the new connection, while the slow handler still ran.
    assert any(index > 1 for key, index in calls.redelivered if key == "k0")
    k0_slow = [call for call in calls.calls["k0"] if call.index == 1]
    if deduplicate:
        # Its ack was lost with the connection, but its success was recorded: the
        # redelivery is acked without running the handler again.
        assert len(k0_slow) == 1
    else:
        # Its ack was lost with the connection: the redelivery runs it again, after it.
        assert len(k0_slow) == 2
    for index in range(2):
        assert await namespace.depth(namespace.topology.partition_queue("ordered", index)) == 0


async def test_an_unexpected_judging_error_holds_its_key_then_dead_letters(
    start_conveyor: StartConveyor, namespace: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Returned unsettled on a live channel, as an unordered delivery is, the event would hold
    # its prefetch slot until the channel closed while the later events of its key ran first.
    real_judge = DeliveryPipeline.judge
    failures: dict[str, int] = defaultdict(int)

    async def judge(self: DeliveryPipeline, message: AbstractIncomingMessage) -> Any:
        event_id = message.message_id or ""
        if (event_id == "k1-2" and failures[event_id] < 2) or event_id == "k2-1":
            failures[event_id] += 1
            raise RuntimeError("store went away mid-judgement")
        return await real_judge(self, message)

    monkeypatch.setattr(DeliveryPipeline, "judge", judge)
    recorder = KeyedRecorder(max_sleep=0.002)
    sub = ordered("ordered", recorder, retry=RetryPolicy(1, ()), partitions=2)
    running = await start_conveyor((sub,))
    await publish_keys(running, keys=3, per_key=5)

    async def all_handled() -> bool:
        return sum(len(seen) for seen in recorder.handled.values()) == 14

    await eventually(all_handled, timeout=30, what="14 events handled")
    # Judged again in place, holding its key: k1-2 came through in its place.
    assert recorder.handled["k1"] == [0, 1, 2, 3, 4]
    # k2-1 failed every time: dead-lettered with its error, and its key went on.
    assert recorder.handled["k2"] == [0, 2, 3, 4]
    assert failures == {"k1-2": 2, "k2-1": 3}
    (dead,) = await namespace.take_at_least(namespace.topology.dead_letter_queue("ordered"), 1)
    assert dead.message_id == "k2-1"
    assert (dead.headers or {})["x-conveyor-error-class"] == "RuntimeError"
    for index in range(2):
        assert await namespace.depth(namespace.topology.partition_queue("ordered", index)) == 0


async def test_an_event_too_large_to_copy_is_rejected_to_the_dlq_and_its_key_goes_on(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    # Its own headers leave no room for ours in one AMQP frame: no copy can ever be made. An
    # unordered delivery is returned until the delivery limit; an ordered one would hold its
    # key while the copy was tried again and again.
    recorder = KeyedRecorder(max_sleep=0.002)
    recorder.fail_always.add(("k0", 0))
    sub = ordered("ordered", recorder, retry=RetryPolicy(1, ()), partitions=2)
    running = await start_conveyor((sub,))
    await namespace.publish_raw(
        b'{"index": 0}',
        routing_key="order.step",
        content_type="application/json",
        message_id="k0-0",
        headers={
            "ce-id": "k0-0",
            "ce-source": "/ordered",
            "ce-type": "order.step",
            "ce-specversion": "1.0",
            "ce-partitionkey": "k0",
            "x-padding": "p" * 121_000,
        },
    )
    await publish_keys(running, keys=1, per_key=3, first=1)

    async def later_ones_handled() -> bool:
        return recorder.handled["k0"] == [1, 2, 3]

    await eventually(later_ones_handled, timeout=20, what="the later events of k0")
    (dead,) = await namespace.take_at_least(namespace.topology.dead_letter_queue("ordered"), 1)
    assert dead.message_id == "k0-0"
    deaths = (dead.headers or {})["x-death"]
    assert isinstance(deaths, list)
    first_death = deaths[0]
    assert isinstance(first_death, dict)
    assert first_death["reason"] == "rejected"  # the queue's own dead-lettering, not our copy
    assert "x-conveyor-reason" not in (dead.headers or {})
    for index in range(2):
        assert await namespace.depth(namespace.topology.partition_queue("ordered", index)) == 0
