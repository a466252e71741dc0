"""Handler failures: quick retries, the broker-side ladder, and the DLQ with the reason attached."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from consumers import Event, PermanentError
from consumers.retry import RetryPolicy
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

FAST_LADDER = RetryPolicy(in_process=2, delays=(0.2, 0.4))


async def test_a_transient_failure_is_retried_in_process_and_then_acked(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda event: event.attempt == 1)
    conveyor = await start_conveyor(
        (
            subscription(
                "flaky",
                ("flaky.*",),
                recorder,
                retry=RetryPolicy(in_process=3),
                prefetch=1,
                concurrency=1,
            ),
        )
    )

    assert (await conveyor.post({"type": "flaky.op", "id": "f-1"})).status == 202

    attempts = await recorder.wait_for(2)
    assert [(event.id, event.attempt) for event in attempts] == [("f-1", 1), ("f-1", 2)]
    # One delivery at a time: the sentinel comes once f-1's delivery was settled, behind a
    # wrong third attempt in process, a DLQ copy (published before the ack) or a requeue.
    assert (await conveyor.post({"type": "flaky.op", "id": "sentinel"})).status == 202
    await recorder.wait_for(4)
    assert recorder.ids() == ["f-1", "f-1", "sentinel", "sentinel"]
    assert await namespace.depth(namespace.topology.dead_letter_queue("flaky")) == 0
    assert await namespace.depth(namespace.topology.queue("flaky")) == 0


async def test_an_always_failing_handler_goes_round_the_ladder_then_into_the_dlq_once(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda event: event.id != "sentinel")
    conveyor = await start_conveyor(
        (
            subscription(
                "broken", ("work.*",), recorder, retry=FAST_LADDER, prefetch=1, concurrency=1
            ),
        )
    )

    response = await conveyor.post(
        {"type": "work.item", "id": "doomed", "subject": "s", "data": {"k": "v"}}
    )

    assert response.status == 202
    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("broken"), 1)
    # in_process x (tiers + 1) attempts, numbered as the handler saw them.
    assert [event.attempt for event in recorder.events] == [1, 2, 3, 4, 5, 6]
    assert dead.message_id == "doomed"
    assert orjson.loads(dead.body) == {"k": "v"}
    assert dead.content_type == "application/json"
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["ce-subject"] == "s"
    assert headers["x-conveyor-reason"] == "retries-exhausted"
    assert headers["x-conveyor-attempts"] == 6
    assert headers["x-conveyor-retries"] == 2
    assert headers["x-conveyor-error-class"] == "RuntimeError"
    assert headers["x-conveyor-error-message"] == "told to fail on doomed"
    assert "RuntimeError" in headers["x-conveyor-error-traceback"]
    assert headers["x-conveyor-first-failure"] <= headers["x-conveyor-last-failure"]
    assert headers["x-conveyor-original-exchange"] == namespace.topology.events_exchange
    assert headers["x-conveyor-original-routing-key"] == "work.item"
    assert {death["reason"] for death in headers["x-death"]} == {"expired"}  # RabbitMQ's own
    # One delivery at a time: the sentinel comes once the last delivery of "doomed" was acked,
    # behind a second DLQ copy (published before the ack) or a requeue of it.
    assert (await conveyor.post({"type": "work.item", "id": "sentinel"})).status == 202
    await recorder.wait_for(7)
    assert await namespace.depth(namespace.topology.dead_letter_queue("broken")) == 0  # one only
    assert recorder.ids() == ["doomed"] * 6 + ["sentinel"]


async def test_the_ladder_waits_each_tier_on_the_broker(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    seen: list[float] = []

    async def failing(event: Event) -> None:
        seen.append(time.monotonic())
        raise RuntimeError(f"attempt {event.attempt}")

    await start_conveyor(
        (subscription("tiers", ("tier.*",), failing, retry=RetryPolicy(1, (0.5, 1.0))),)
    )
    await namespace.publish_raw(
        b"{}",
        routing_key="tier.x",
        content_type="application/json",
        headers={"ce-specversion": "1.0", "ce-id": "t", "ce-source": "/s", "ce-type": "tier.x"},
    )

    await namespace.take_at_least(namespace.topology.dead_letter_queue("tiers"), 1)
    assert len(seen) == 3
    first_gap, second_gap = seen[1] - seen[0], seen[2] - seen[1]
    # Never early; late only by broker and scheduling slack.
    assert 0.45 <= first_gap < 2.5
    assert 0.95 <= second_gap < 3.0


async def test_a_permanent_error_dead_letters_after_one_attempt(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    calls: list[int] = []

    async def refuse(event: Event) -> None:
        calls.append(event.attempt)
        raise PermanentError("customer does not exist")

    conveyor = await start_conveyor(
        (subscription("strict", ("strict.*",), refuse, retry=FAST_LADDER),)
    )
    assert (await conveyor.post({"type": "strict.op", "id": "p-1"})).status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("strict"), 1)
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["x-conveyor-reason"] == "permanent-error"
    assert headers["x-conveyor-error-class"] == "PermanentError"
    assert headers["x-conveyor-attempts"] == 1
    assert calls == [1]


async def test_a_handler_past_its_timeout_is_a_retryable_failure(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    attempts: list[int] = []

    async def slow(event: Event) -> None:
        attempts.append(event.attempt)
        await asyncio.sleep(5)

    conveyor = await start_conveyor(
        (subscription("slow", ("slow.*",), slow, timeout=0.2, retry=RetryPolicy(2, ())),)
    )
    assert (await conveyor.post({"type": "slow.op", "id": "late"})).status == 202

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("slow"), 1)
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["x-conveyor-error-class"] == "HandlerTimeoutError"
    assert headers["x-conveyor-reason"] == "retries-exhausted"
    assert attempts == [1, 2]


async def test_a_failing_subscription_does_not_affect_another_one(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    stuck = Recorder()
    stuck.release.clear()  # never returns during the test
    healthy = Recorder()
    conveyor = await start_conveyor(
        (
            subscription("stuck", ("shared.*",), stuck, prefetch=1, concurrency=1),
            subscription("healthy", ("shared.*",), healthy),
        )
    )
    for n in range(5):
        assert (await conveyor.post({"type": "shared.op", "id": f"s{n}"})).status == 202

    await healthy.wait_for(5)
    assert sorted(healthy.ids()) == [f"s{n}" for n in range(5)]
    assert stuck.started == 1
    stuck.release.set()
    await stuck.wait_for(5)


async def test_headers_that_cannot_be_written_back_do_not_block_the_consumer(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    await start_conveyor((subscription("odd", ("odd.*",), recorder, prefetch=1, concurrency=1),))
    required = {"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "odd.x"}
    # A non-UTF-8 id makes the event malformed, and pamqp reads it back as bytes it cannot
    # write again; the DLQ copy must still go out and the consumer move on.
    await namespace.publish_raw(
        b"", routing_key="odd.x", headers={**required, "ce-id": bytearray(b"\xff\xfe")}
    )
    await namespace.publish_raw(b"", routing_key="odd.x", headers={**required, "ce-id": "fine"})

    await recorder.wait_for(1)
    assert recorder.ids() == ["fine"]
    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("odd"), 1)
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["x-conveyor-reason"] == "malformed"
    assert bytes(headers["ce-id"]) == b"\xff\xfe"


async def test_counters_from_another_publisher_are_not_trusted(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder(fail=lambda _event: True)
    await start_conveyor(
        (subscription("fresh", ("fresh.*",), recorder, retry=RetryPolicy(1, (0.1,))),)
    )
    await namespace.publish_raw(
        b"",
        routing_key="fresh.x",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "forged",
            "ce-source": "/s",
            "ce-type": "fresh.x",
            "x-conveyor-retries": 7,
            "x-conveyor-attempts": 40,
            "x-conveyor-reason": "permanent-error",
        },
    )

    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("fresh"), 1)
    assert [event.attempt for event in recorder.events] == [1, 2]  # the whole ladder, from 1
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["x-conveyor-attempts"] == 2
    assert headers["x-conveyor-reason"] == "retries-exhausted"
