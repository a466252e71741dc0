"""Ordered subscriptions on the real broker: per key in publish order, keys in parallel."""

from __future__ import annotations

import dataclasses

from consumers import Event
from consumers.ordering import Ordering
from consumers.retry import RetryPolicy
from service import Role
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.ordering import KeyedRecorder, order_violations, ordered, publish_keys
from tests.support.waiting import eventually


async def test_each_key_in_publish_order_while_keys_run_in_parallel(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = KeyedRecorder(max_sleep=0.02)
    sub = ordered("ordered", recorder, retry=RetryPolicy(1, ()))
    # A backlog first, so each partition hands over many events of one key at once.
    ingress = await start_conveyor((sub,), role=Role.INGRESS)
    await publish_keys(ingress, keys=20, per_key=20)
    await start_conveyor((sub,), role=Role.WORKER)

    async def all_handled() -> bool:
        return sum(len(seen) for seen in recorder.handled.values()) >= 400

    await eventually(all_handled, timeout=30, what="400 events handled")
    assert order_violations(recorder.handled, 20) == []
    assert recorder.overlaps == 0  # one key never ran twice at once
    assert len(recorder.started) == 400  # no duplicates without a crash
    # Keys did run side by side: some event started while another key's was unfinished.
    assert max(len({k for k, _ in recorder.started[i : i + 8]}) for i in range(392)) > 1
    partitions = [namespace.topology.partition_queue("ordered", index) for index in range(4)]
    assert [await namespace.depth(queue) for queue in partitions] == [0, 0, 0, 0]


async def test_a_retry_delays_only_its_own_key(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = KeyedRecorder(max_sleep=0.002)
    recorder.fail_once.add(("k0", 3))
    # One attempt in process, then a 1 s wait holding the key, then the second attempt; one
    # handler at a time, so the others can go on only if the wait leaves the handler slot.
    sub = dataclasses.replace(
        ordered("ordered", recorder, retry=RetryPolicy(in_process=1, delays=(1.0,))),
        concurrency=1,
    )
    ingress = await start_conveyor((sub,), role=Role.INGRESS)
    await publish_keys(ingress, keys=6, per_key=10)
    await start_conveyor((sub,), role=Role.WORKER)

    async def all_handled() -> bool:
        return sum(len(seen) for seen in recorder.handled.values()) >= 60

    await eventually(all_handled, timeout=30, what="60 events handled")
    assert order_violations(recorder.handled, 10) == []
    # k0's event 3 ran twice; nothing of k0 after it started before its second attempt...
    k0 = [index for key, index in recorder.started if key == "k0"]
    assert k0 == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    # ...while the other keys went on meanwhile, in the only handler slot.
    failed_at, retry_at = [i for i, started in enumerate(recorder.started) if started == ("k0", 3)]
    others = [i for i, (key, _) in enumerate(recorder.started) if key != "k0"]
    assert any(failed_at < i < retry_at for i in others)
    assert await namespace.depth(namespace.topology.dead_letter_queue("ordered")) == 0


async def test_a_dead_lettered_event_does_not_block_its_key(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = KeyedRecorder(max_sleep=0.002)
    recorder.fail_always.add(("k1", 2))
    sub = ordered("ordered", recorder, retry=RetryPolicy(in_process=2, delays=(0.2,)))
    running = await start_conveyor((sub,))

    await publish_keys(running, keys=3, per_key=8)

    async def all_handled() -> bool:
        return sum(len(seen) for seen in recorder.handled.values()) >= 23

    await eventually(all_handled, timeout=30, what="23 events handled")
    assert recorder.handled["k1"] == [0, 1, 3, 4, 5, 6, 7]
    assert recorder.handled["k0"] == recorder.handled["k2"] == list(range(8))
    (dead,) = await namespace.take_at_least(namespace.topology.dead_letter_queue("ordered"), 1)
    assert dead.message_id == "k1-2"
    assert (dead.headers or {})["x-conveyor-reason"] == "permanent-error"
    # A permanent error is not retried, ordered or not.
    assert [started for started in recorder.started if started == ("k1", 2)] == [("k1", 2)]


async def test_an_event_without_a_key_is_handled_too(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    seen: list[str] = []

    async def note(event: Event) -> None:
        seen.append(event.id)

    plain = subscription("ordered", ("order.*",), note, prefetch=16, concurrency=8)
    sub = dataclasses.replace(plain, ordering=Ordering("subject", 4))
    running = await start_conveyor((sub,))

    for index in range(5):
        response = await running.post(
            {"type": "order.step", "id": f"nokey-{index}", "source": "/x"}
        )
        assert response.status == 202

    async def all_seen() -> bool:
        return len(seen) == 5

    await eventually(all_seen, what="the keyless events handled")
    # No key is one more key: they share a partition and keep their order.
    assert seen == [f"nokey-{index}" for index in range(5)]
    depths = [
        await namespace.depth(namespace.topology.partition_queue("ordered", index))
        for index in range(4)
    ]
    assert depths == [0, 0, 0, 0]
