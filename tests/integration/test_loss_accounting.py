"""The promise, counted (the fast scenarios; `make chaos` runs the rest and the big baseline).

Each scenario's pass criterion: lost = 0 and unexpected = 0, plus what the scenario adds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
import orjson
import pytest

from consumers import Event, PermanentError, RetryableError
from consumers.retry import RetryPolicy
from tests.conftest import Running, StartConveyor, subscription, url_with_port
from tests.support.ledger import Account, Ledger
from tests.support.namespace import Namespace
from tests.support.processes import Process
from tests.support.proxy import FaultProxy
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


async def test_a_stalled_link_is_cut_within_two_heartbeats_and_nothing_is_lost(
    start_conveyor: StartConveyor,
    namespace: Namespace,
    amqp_url: str,
    proxy: FaultProxy,
    accounts: list[Account],
) -> None:
    ledger = Ledger("stalled link for 4 s under load (heartbeat 2 s, 1,500 events)")
    heartbeat, publish_timeout = 2.0, 1.0
    conveyor = await start_conveyor(
        (subscription("stall", ("chaos.*",), ledger.handler(), prefetch=32, concurrency=16),),
        amqp_url_override=url_with_port(amqp_url, proxy.port),
        publish_timeout=publish_timeout,
        amqp_heartbeat=heartbeat,
    )
    clock = asyncio.get_running_loop().time
    detected_after: list[float] = []

    async def not_ready() -> bool:
        return (await conveyor.client.get("/readyz")).status == 503

    async def stall_for_a_while() -> None:
        await asyncio.sleep(0.5)
        proxy.stalled = True  # sockets stay open, nothing is forwarded: a silent network
        stalled_at = clock()
        await eventually(not_ready, timeout=4 * heartbeat, what="the stall to be noticed")
        detected_after.append(clock() - stalled_at)
        await asyncio.sleep(4.0 - detected_after[0])
        proxy.stalled = False

    await asyncio.gather(ledger.send(conveyor, 1_500, concurrency=32), stall_for_a_while())
    await conveyor.ready(timeout=30)
    await ledger.settled(timeout=60)
    await ledger.take_dead_letters(namespace, ["stall"])
    ledger.notes += [
        f"stall noticed after {detected_after[0]:.1f} s",
        f"slowest answer {max(ledger.latencies):.2f} s",
    ]
    account = ledger.account()
    accounts.append(account)

    # RabbitMQ counts a peer unreachable after two missed heartbeats; so does conveyor.
    assert detected_after[0] <= 2 * heartbeat
    assert sum(account.rejected.values()) > 0  # the stall was felt by clients
    assert set(account.rejected) <= {503}  # refused honestly, never a false 202
    # No request waited much past the publish timeout, stall or not.
    assert max(ledger.latencies) < publish_timeout + 1.0
    assert (account.lost, account.unexpected) == (0, 0)
    assert account.recovered <= sum(account.rejected.values())
    assert account.duplicated <= 32  # at most what was in flight (prefetch)


# On uvloop a connection reset mid-handshake once ended the connect retries silently: the link
# never came up (service.broker.link.HandshakeCutError). Both loops go through the same scenario.
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
async def test_broker_down_at_start_refuses_then_accepts_within_seconds_of_it_coming_up(
    launch: Callable[..., Awaitable[Process]],
    namespace: Namespace,
    amqp_url: str,
    proxy: FaultProxy,
    accounts: list[Account],
    *,
    loop_name: str,
) -> None:
    ledger = Ledger(f"broker down when conveyor starts (200 events down, 300 up; {loop_name})")
    proxy.accepting = False  # every connection attempt fails, as with a broker not yet up
    # A real `conveyor serve` with its default reconnect backoff.
    process = await launch(
        wait_ready=False,
        CONVEYOR_AMQP_URL=url_with_port(amqp_url, proxy.port),
        CONVEYOR_EVENT_LOOP=loop_name,
    )
    assert f'"event_loop": "{loop_name}"' in process.output.read_text()
    log = process.output.parent / "handled.log"
    work = {"sleep": 0, "log": str(log)}
    await asyncio.sleep(6.0)  # long enough for the backoff to reach its cap
    assert await process.get("/readyz") == 503
    assert await process.get("/livez") == 200
    await ledger.send(process, 200, concurrency=16, event_type="slow.job", data=work)
    assert set(ledger.answers.values()) == {503}

    proxy.accepting = True
    clock = asyncio.get_running_loop().time
    up_at = clock()

    async def ready() -> bool:
        return await process.get("/readyz") == 200

    await eventually(ready, timeout=30, what="conveyor to become ready")
    ready_after = clock() - up_at
    await ledger.send(process, 300, concurrency=16, event_type="slow.job", data=work)

    await ledger.handled_by_log(log, timeout=30)
    await ledger.take_dead_letters(namespace, ["slow"])
    ledger.notes.append(f"ready {ready_after:.1f} s after the broker came up")
    account = ledger.account()
    accounts.append(account)

    # The reconnect backoff is capped at 5 s: ready within one step of it, plus the set-up.
    assert ready_after < 5.0 + 3.0, ready_after
    assert (account.accepted, account.rejected) == (300, {503: 200})
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)


class _BinaryJsonIngress:
    """POSTs the ledger's events in binary mode, as `application/json`; every tenth body is not
    JSON (cut short)."""

    def __init__(self, conveyor: Running) -> None:
        self._conveyor = conveyor

    async def post_status(self, document: dict[str, Any]) -> int:
        index = int(document["id"].rsplit("-", 1)[1])
        body = b'{"total": 12.5' if index % 10 == 0 else orjson.dumps({"total": index})
        headers = {f"ce-{name}": value for name, value in document.items()}
        response = await self._conveyor.client.post(
            "/v1/events",
            data=body,
            headers=headers | {"ce-specversion": "1.0", "Content-Type": "application/json"},
        )
        return response.status


async def test_malformed_json_is_refused_at_the_door_or_dead_lettered_with_a_final_status(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("malformed JSON: 20 of 200 over HTTP, 20 more over AMQP")
    conveyor = await start_conveyor(
        (subscription("strict", ("chaos.*",), ledger.handler(), concurrency=8),)
    )
    await ledger.send(_BinaryJsonIngress(conveyor), 200, concurrency=16)
    # Published straight over AMQP by another service: nobody to answer 400 to.
    for index in range(20):
        await namespace.publish_raw(
            b'{"total": 12.5',
            routing_key="chaos.event",
            content_type="application/json",
            headers={"ce-specversion": "1.0", "ce-id": f"amqp-{index}", "ce-source": "/chaos"}
            | {"ce-type": "chaos.event"},
            message_id=f"amqp-{index}",
        )
    await ledger.settled()

    async def amqp_ones_dead_lettered() -> bool:
        await ledger.take_dead_letters(namespace, ["strict"])
        return len(ledger.dead) == 20

    await eventually(amqp_ones_dead_lettered, what="the 20 malformed AMQP events in the DLQ")
    final = 0
    for index in range(20):
        _, found = await conveyor.status(f"/v1/events/amqp-{index}", wait="10s")
        entry = found["subscriptions"]["strict"]
        final += (entry["state"], entry["last_error"]["reason"]) == ("dead-lettered", "malformed")
    ledger.notes.append(f"20 over AMQP: {len(ledger.dead)} in the DLQ, {final} with a final status")
    account = ledger.account()
    accounts.append(account)

    assert account.rejected == {400: 20}  # refused while the client can still fix them
    assert (account.accepted, account.handled, account.dead_lettered) == (180, 180, 0)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)
    assert ledger.dead == {f"amqp-{index}" for index in range(20)}
    assert final == 20
    await queues_empty(namespace, "strict")
