"""Ordered subscriptions, pure logic: the settings, the plugin error, lanes, the printed plan."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import aiormq.exceptions
import pytest

from consumers import Event, builtin
from consumers.dead_letter import Failure
from consumers.deadlines import SharedTimeout
from consumers.ordering import (
    HandlerSlot,
    KeyLanes,
    Ordering,
    PartitioningUnavailableError,
    explain_missing_exchange_type,
    run_holding_key,
)
from consumers.retry import RetryPolicy
from producers.topology import Topology
from service import SettingError, load_subscriptions
from service.broker.topology_plan import plan_topology, render_topology
from tests.conftest import subscription
from tests.support.ordering import order_violations

HEAD = (
    "[[subscriptions]]\nname = 'orders'\nevents = ['order.*']\n"
    "handler = 'consumers.builtin:discard'\n"
)


def load(tmp_path: Path, text: str) -> tuple[Ordering | None, RetryPolicy]:
    path = tmp_path / "subscriptions.toml"
    path.write_text(HEAD + text)
    (loaded,) = load_subscriptions(path)
    return loaded.ordering, loaded.retry


def test_ordered_by_and_partitions_load(tmp_path: Path) -> None:
    ordering, _ = load(tmp_path, 'ordered_by = "partitionkey"\npartitions = 8\n')
    assert ordering == Ordering("partitionkey", 8)
    assert ordering.header == "ce-partitionkey"
    assert load(tmp_path, 'ordered_by = "subject"\n')[0] == Ordering("subject", 1)
    assert load(tmp_path, "")[0] is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('ordered_by = "type"\n', "subscriptions[0] (orders).ordered_by among"),
        ("ordered_by = 3\n", "subscriptions[0] (orders).ordered_by among"),
        ('ordered_by = "data.order_id"\n', "a data field cannot be hashed by RabbitMQ"),
        ('ordered_by = "subject"\npartitions = 0\n', ".partitions as an integer from 1 to 64"),
        ('ordered_by = "subject"\npartitions = 65\n', ".partitions as an integer from 1 to 64"),
        ('ordered_by = "subject"\npartitions = true\n', ".partitions as an integer from 1 to 64"),
        ("partitions = 4\n", "subscriptions[0] (orders).partitions only with ordered_by"),
        (
            # 3 x 5 attempts x 2 min + 671 s of delays: past the 25 minutes an event may hold.
            'ordered_by = "subject"\ntimeout = "2m"\n',
            ".retry.delays and timeout that hold an ordered event at most 25 minutes",
        ),
    ],
)
def test_each_ordering_mistake_names_its_setting(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(SettingError) as caught:
        load(tmp_path, text)
    assert caught.value.name == "CONVEYOR_CONFIG"
    assert names in str(caught.value)


def test_the_default_retry_policy_fits_an_ordered_subscription(tmp_path: Path) -> None:
    ordering, retry = load(tmp_path, 'ordered_by = "partitionkey"\n')
    assert ordering is not None
    assert retry == RetryPolicy()


def test_a_missing_plugin_becomes_an_error_that_says_how_to_enable_it() -> None:
    # The connection close RabbitMQ 3.10.8 sends for an exchange type it does not know.
    refused = aiormq.exceptions.ConnectionCommandInvalid(
        "COMMAND_INVALID - unknown exchange type 'x-consistent-hash'"
    )
    explained = explain_missing_exchange_type(refused)
    assert isinstance(explained, PartitioningUnavailableError)
    assert "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange" in str(explained)
    assert "ordered_by" in str(explained)
    other = aiormq.exceptions.ConnectionCommandInvalid(
        "COMMAND_INVALID - unknown exchange type 'x-delayed-message'"
    )
    assert explain_missing_exchange_type(other) is None
    assert explain_missing_exchange_type(ConnectionResetError("reset")) is None


async def test_lanes_run_one_key_at_a_time_in_join_order() -> None:
    lanes = KeyLanes()
    seen: dict[str, list[int]] = {"a": [], "b": []}
    running = {"a": 0, "b": 0}
    overlapped = []

    async def one(key: str, index: int, pause: float) -> None:
        async with lanes.join(key):
            running[key] += 1
            overlapped.append(running["a"] > 1 or running["b"] > 1)
            await asyncio.sleep(pause)
            seen[key].append(index)
            running[key] -= 1

    tasks = []
    for index in range(6):
        # Later events sleep less: without the lanes they would overtake.
        tasks.append(asyncio.create_task(one("a", index, 0.012 - index * 0.002)))
        tasks.append(asyncio.create_task(one("b", index, 0.001)))
    await asyncio.gather(*tasks)
    assert seen == {"a": list(range(6)), "b": list(range(6))}
    assert not any(overlapped)
    assert lanes.keys_waiting == 0


async def test_a_cancelled_waiter_still_holds_back_the_one_behind_it() -> None:
    lanes = KeyLanes()
    order: list[str] = []
    first_done = asyncio.Event()

    async def first() -> None:
        async with lanes.join("k"):
            await first_done.wait()
            order.append("first")

    async def second() -> None:
        async with lanes.join("k"):
            order.append("second")

    async def third() -> None:
        async with lanes.join("k"):
            order.append("third")

    tasks = [asyncio.create_task(step()) for step in (first, second, third)]
    await asyncio.sleep(0.01)
    tasks[1].cancel()
    await asyncio.sleep(0.01)
    assert order == []  # third waits for first, not for the cancelled second
    first_done.set()
    await asyncio.gather(tasks[0], tasks[2])
    assert order == ["first", "third"]


def test_order_check_allows_a_repeated_suffix_and_nothing_else() -> None:
    assert order_violations({"k": [0, 1, 2, 3, 2, 3, 4]}, 5) == []
    assert order_violations({"k": [0, 1, 3, 2, 4]}, 5) != []
    assert order_violations({"k": [0, 1, 2, 4]}, 5) != []
    assert order_violations({"k": [0, 1, 2, 3]}, 5) != []


async def test_the_plan_prints_the_hash_exchange_and_the_partitions() -> None:
    plain = subscription("orders", ("order.*",), builtin.discard)
    ordered = dataclasses.replace(plain, ordering=Ordering("partitionkey", 3))
    entities = await plan_topology(Topology("ns"), (ordered,))
    exchange = next(e for e in entities if e.get("name") == "ns.orders.partitions")
    assert exchange["type"] == "x-consistent-hash"
    assert exchange["arguments"] == {"hash-header": "ce-partitionkey"}
    assert {
        "kind": "exchange-binding",
        "exchange": "ns.events",
        "destination": "ns.orders.partitions",
        "routing_key": "order.*",
    } in entities
    queues = {e["name"]: e["arguments"] for e in entities if e["kind"] == "queue"}
    assert set(queues) == {
        "ns.unrouted",
        "ns.orders.dlq",
        "ns.orders.p0",
        "ns.orders.p1",
        "ns.orders.p2",
    }
    assert queues["ns.orders.p1"]["x-single-active-consumer"] is True
    assert queues["ns.orders.p1"]["x-dead-letter-routing-key"] == "orders"
    assert "binding  ns.events -> exchange ns.orders.partitions [order.*]" in render_topology(
        entities
    )


async def test_retry_waits_stop_where_the_consumer_timeout_would_come() -> None:
    attempts = 0
    waited: list[float] = []

    async def failing(_event: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("downstream away")

    async def wait(_attempts: int, _failure: Failure, delay: float) -> bool:
        waited.append(delay)
        return True

    held = await run_holding_key(
        failing,
        Event(id="e", source="/s", type="t", specversion="1.0"),
        policy=RetryPolicy(in_process=1, delays=(0.0, 0.0, 50.0, 0.0)),
        timeout=SharedTimeout(1.0),
        # Delivered a while ago: 30 s left, so the 50 s delay (and a 1 s attempt after it)
        # would settle it past the consumer timeout.
        settle_by=asyncio.get_running_loop().time() + 30.0,
        keep_going=lambda: True,
        wait=wait,
    )

    assert waited == [0.0, 0.0]
    assert attempts == 3
    assert (held.passes, held.interrupted, held.result.attempts) == (2, False, 3)
    assert held.result.failure is not None  # dead-lettered now, not after the broker's timeout


async def test_retries_stop_when_the_delivery_is_gone() -> None:
    attempts = 0

    async def failing(_event: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("downstream away")

    async def wait(_attempts: int, _failure: Failure, _delay: float) -> bool:
        return False  # its channel closed during the wait

    held = await run_holding_key(
        failing,
        Event(id="e", source="/s", type="t", specversion="1.0"),
        policy=RetryPolicy(in_process=1, delays=(0.0, 0.0)),
        timeout=SharedTimeout(1.0),
        settle_by=asyncio.get_running_loop().time() + 600.0,
        keep_going=lambda: True,
        wait=wait,
    )

    assert attempts == 1
    assert held.interrupted  # nothing to settle: the broker has it back


async def test_a_lent_slot_serves_another_and_comes_back() -> None:
    slots = asyncio.Semaphore(1)
    slot = HandlerSlot(slots)
    other_ran = asyncio.Event()

    async def other() -> None:
        async with HandlerSlot(slots):
            other_ran.set()

    async with slot:
        async with slot.lent():
            await asyncio.wait_for(other(), timeout=1)
        assert slots.locked()  # held again
    assert not slots.locked()
    assert other_ran.is_set()

    # Cancelled while taking the slot back, it holds nothing and releases nothing.
    hog = HandlerSlot(slots)

    async def lender() -> None:
        async with slot, slot.lent():
            await hog.__aenter__()  # another takes the lent slot: the take-back has to wait

    task = asyncio.create_task(lender())
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await hog.__aexit__(None, None, None)
    await slots.acquire()
    assert slots.locked()  # one slot, as configured: none was released twice
