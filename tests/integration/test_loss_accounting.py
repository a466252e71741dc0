"""The promise, counted (the fast scenarios; `make chaos` runs the rest and the big baseline).

Each scenario's pass criterion: lost = 0 and unexpected = 0, plus what the scenario adds.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
import aiormq.exceptions

from consumers import Event, PermanentError, RetryableError, RetryPolicy
from tests.conftest import Namespace, StartConveyor, subscription
from tests.support.ledger import Account, Ledger
from tests.support.waiting import eventually


async def queues_empty(namespace: Namespace, name: str) -> None:
    topology = namespace.topology
    for queue in (topology.queue(name), topology.dead_letter_queue(name)):
        assert await namespace.depth(queue) == 0, queue


async def test_baseline_every_accepted_event_is_handled_once(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("baseline (500 events, 32 clients)")
    conveyor = await start_conveyor(
        (subscription("steady", ("chaos.*",), ledger.handler(), prefetch=64, concurrency=32),)
    )

    await ledger.send(conveyor, 500, concurrency=32)
    await ledger.settled()
    await ledger.take_dead_letters(namespace, ["steady"])
    account = ledger.account()
    accounts.append(account)

    assert (account.accepted, account.handled) == (500, 500)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)
    await queues_empty(namespace, "steady")


async def test_a_poison_event_among_good_ones_is_the_one_dlq_entry(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("poison among 200")
    poison: set[str] = set()

    async def refuse_one(event: Event) -> None:
        if not poison:
            poison.add(event.id)
        if event.id in poison:
            raise PermanentError("poison")

    conveyor = await start_conveyor(
        (subscription("mixed", ("chaos.*",), ledger.handler(refuse_one), concurrency=8),)
    )
    await ledger.send(conveyor, 200, concurrency=16)

    async def poison_in_dlq() -> None:
        while not ledger.dead:
            await ledger.take_dead_letters(namespace, ["mixed"])
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poison_in_dlq(), timeout=15)
    await ledger.settled()
    account = ledger.account()
    accounts.append(account)

    assert ledger.dead == poison
    assert (account.handled, account.dead_lettered) == (199, 1)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)


async def test_a_downstream_failing_for_a_while_loses_nothing_and_dead_letters_nothing(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("downstream down for 1.5 s")
    recovers_at = time.monotonic() + 1.5

    async def flaky(_event: Event) -> None:
        if time.monotonic() < recovers_at:
            raise RetryableError("downstream unavailable")

    retry = RetryPolicy(in_process=2, delays=(0.5, 1.0, 2.0))
    conveyor = await start_conveyor(
        (subscription("flaky", ("chaos.*",), ledger.handler(flaky), retry=retry, concurrency=16),)
    )
    await ledger.send(conveyor, 200, concurrency=16)
    await ledger.settled(timeout=30)
    await ledger.take_dead_letters(namespace, ["flaky"])
    account = ledger.account()
    accounts.append(account)

    assert (account.handled, account.dead_lettered) == (200, 0)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)
    assert sum(ledger.calls.values()) > 200  # the failures did happen and were retried


async def test_a_queue_deleted_from_outside_comes_back_with_its_consumer(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("subscription queue deleted from outside")
    conveyor = await start_conveyor((subscription("fragile", ("chaos.*",), ledger.handler()),))
    queue_name = namespace.topology.queue("fragile")
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(queue_name)

        async def consumed_again() -> bool:
            probe = await connection.channel()
            try:
                declared = await probe.declare_queue(queue_name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
            return declared.declaration_result.consumer_count == 1

        # aio-pika's robust channel re-declares the queue (with its bindings) and consumes again.
        await eventually(consumed_again, timeout=20, what="the queue and its consumer back")

    await conveyor.ready()
    await ledger.send(conveyor, 100, concurrency=16)
    await ledger.settled()
    account = ledger.account()
    accounts.append(account)

    assert (account.accepted, account.handled) == (100, 100)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)
