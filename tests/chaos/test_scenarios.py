"""Scenarios with loss accounting that take longer or break the link: `make chaos`.

Pass criterion for each: lost = 0 and unexpected = 0, plus what the scenario adds.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.conftest import StartConveyor, subscription, url_with_port
from tests.support.ledger import Account, Ledger
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy

RABBITMQCTL = shutil.which("rabbitmqctl")


async def test_baseline_10000_events_from_32_clients(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("baseline (10,000 events, 32 clients)")
    conveyor = await start_conveyor(
        (subscription("steady", ("chaos.*",), ledger.handler(), prefetch=128, concurrency=64),)
    )

    await ledger.send(conveyor, 10_000, concurrency=32)
    await ledger.settled(timeout=120)
    await ledger.take_dead_letters(namespace, ["steady"])
    account = ledger.account()
    accounts.append(account)

    assert (account.accepted, account.handled) == (10_000, 10_000)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)
    for queue in (
        namespace.topology.queue("steady"),
        namespace.topology.dead_letter_queue("steady"),
    ):
        assert await namespace.depth(queue) == 0


async def test_connections_cut_again_and_again_under_load(
    start_conveyor: StartConveyor,
    namespace: Namespace,
    amqp_url: str,
    proxy: FaultProxy,
    accounts: list[Account],
) -> None:
    ledger = Ledger("connection cut 3 times under load (2,000 events)")
    conveyor = await start_conveyor(
        (subscription("cut", ("chaos.*",), ledger.handler(), prefetch=32, concurrency=16),),
        amqp_url_override=url_with_port(amqp_url, proxy.port),
        publish_timeout=2.0,
    )

    async def cut_three_times() -> None:
        for _ in range(3):
            await asyncio.sleep(0.7)
            proxy.cut_all()

    await asyncio.gather(ledger.send(conveyor, 2_000, concurrency=32), cut_three_times())
    await conveyor.ready(timeout=30)
    await ledger.settled(timeout=60)
    await ledger.take_dead_letters(namespace, ["cut"])
    account = ledger.account()
    accounts.append(account)

    assert set(account.rejected) <= {503}  # refused honestly while reconnecting, never a 5xx else
    assert (account.lost, account.unexpected) == (0, 0)
    # A 503'd publish may still arrive (its confirm died with the connection): never more
    # than were refused.
    assert account.recovered <= sum(account.rejected.values())
    # Redeliveries after a cut are bounded by what was in flight (prefetch) per cut.
    assert account.duplicated <= 3 * 32


async def test_broker_restart_mid_stream(
    start_conveyor: StartConveyor, namespace: Namespace, accounts: list[Account]
) -> None:
    ledger = Ledger("broker restart mid-stream (2,000 events, then 500)")
    conveyor = await start_conveyor(
        (subscription("restart", ("chaos.*",), ledger.handler(), prefetch=32, concurrency=16),),
        publish_timeout=2.0,
    )

    async def restart_broker() -> None:
        await asyncio.sleep(1.0)
        await rabbitmqctl("stop_app")
        await asyncio.sleep(3.0)
        await rabbitmqctl("start_app")

    await asyncio.gather(ledger.send(conveyor, 2_000, concurrency=32), restart_broker())
    await conveyor.ready(timeout=60)
    refused_during_outage = len(ledger.answers) - len(ledger.accepted)
    await ledger.send(conveyor, 500, concurrency=32)  # after: everything is accepted again
    await ledger.settled(timeout=90)
    await ledger.take_dead_letters(namespace, ["restart"])
    account = ledger.account()
    accounts.append(account)

    assert refused_during_outage > 0  # the outage was seen
    assert sum(account.rejected.values()) == refused_during_outage  # none after it
    assert set(account.rejected) <= {503, 0}  # refused honestly, or the request itself failed
    assert (account.lost, account.unexpected) == (0, 0)
    assert account.duplicated <= 32  # at most what was in flight (prefetch) when it stopped


async def rabbitmqctl(*arguments: str) -> None:
    if RABBITMQCTL is None:
        pytest.fail("the chaos suite needs rabbitmqctl for the local broker", pytrace=False)
    process = await asyncio.create_subprocess_exec(
        RABBITMQCTL, *arguments, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()
