"""Several broker addresses: when the node in use goes away, conveyor moves to the next one.

Two proxies in front of the one shared broker stand for two cluster nodes: stopping the proxy
in use (refusing new connections and cutting the open one) is, to conveyor, a node gone.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs
from yarl import URL

from consumers import Event
from service.cli.client import run_client
from service.cli.main import build_parser
from tests.conftest import Running, StartConveyor, subscription, url_with_port
from tests.integration.test_metrics import scrape
from tests.support.ledger import Account, Ledger
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy
from tests.support.waiting import eventually

FAILOVER_AFTER = 1.0
ADMIN_TOKEN = "failover-admin-token-0123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class TwoNodes:
    first: FaultProxy
    second: FaultProxy
    amqp_url: str  # both addresses, as CONVEYOR_AMQP_URL takes them

    @property
    def both(self) -> tuple[FaultProxy, FaultProxy]:
        return self.first, self.second


@pytest.fixture
async def nodes(amqp_url: str, proxy: FaultProxy) -> AsyncIterator[TwoNodes]:
    """The `proxy` fixture and a second proxy, standing for two nodes of one cluster."""
    target = URL(amqp_url)
    second = FaultProxy(target.host or "127.0.0.1", target.port or 5672)
    await second.start()
    addresses = f"{url_with_port(amqp_url, proxy.port)},{url_with_port(amqp_url, second.port)}"
    yield TwoNodes(proxy, second, addresses)
    await second.stop()


async def node_in_use(nodes: tuple[FaultProxy, FaultProxy]) -> tuple[FaultProxy, FaultProxy]:
    """(the node conveyor is connected through, the other one)."""

    async def one_carries_it() -> bool:
        return sorted(node.open_links for node in nodes) == [0, 1]

    await eventually(one_carries_it, what="one link through exactly one node")
    used = nodes[0] if nodes[0].open_links else nodes[1]
    return used, nodes[1] if used is nodes[0] else nodes[0]


def take_down(node: FaultProxy) -> None:
    node.accepting = False
    node.cut_all()


async def settled(conveyor: Running, subscription: str, outcome: str | None = None) -> float:
    """Deliveries of `subscription` this process settled (with `outcome`, or any)."""
    samples = await scrape(conveyor)
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "conveyor_deliveries_total"
        and ("subscription", subscription) in labels
        and (outcome is None or ("outcome", outcome) in labels)
    )


async def readiness(conveyor: Running) -> tuple[int, dict[str, str]]:
    # With the admin token: the broker check's detail (which addresses failed) is for admins.
    response = await conveyor.client.get("/readyz", headers=ADMIN)
    checks: dict[str, str] = (await response.json())["checks"]
    return response.status, checks


async def test_the_node_in_use_goes_away_mid_stream_and_conveyor_moves_to_the_next(
    nodes: TwoNodes,
    start_conveyor: StartConveyor,
    namespace: Namespace,
    accounts: list[Account],
) -> None:
    ledger = Ledger("node in use gone mid-stream, two addresses (1,000 events)")
    conveyor = await start_conveyor(
        (subscription("moving", ("chaos.*",), ledger.handler(), prefetch=32, concurrency=16),),
        amqp_url_override=nodes.amqp_url,
        amqp_failover_after=FAILOVER_AFTER,
        publish_timeout=2.0,
    )
    gone, remaining = await node_in_use(nodes.both)
    clock = asyncio.get_running_loop().time
    problems: set[str] = set()
    back_after: list[float] = []

    async def take_it_down_part_way() -> None:
        await eventually(lambda: _at_least(ledger, 200), timeout=30, what="200 events handled")
        take_down(gone)
        gone_at = clock()

        async def noticed() -> bool:
            status, checks = await readiness(conveyor)
            problems.add(checks["broker"])
            return status != 200

        async def ready_again() -> bool:
            status, checks = await readiness(conveyor)
            problems.add(checks["broker"])
            return status == 200

        await eventually(noticed, timeout=10, what="the lost node to be noticed")
        await eventually(ready_again, timeout=20, what="conveyor ready on the other node")
        back_after.append(clock() - gone_at)

    with capture_logs() as logs:
        await asyncio.gather(ledger.send(conveyor, 1_000, concurrency=32), take_it_down_part_way())
    await ledger.settled(timeout=60)
    await ledger.take_dead_letters(namespace, ["moving"])
    ledger.notes += [
        f"ready on the other node {back_after[0]:.1f} s after the cut",
        f"failover after {FAILOVER_AFTER:g} s down",
    ]
    account = ledger.account()
    accounts.append(account)

    assert (gone.open_links, remaining.open_links) == (0, 1)
    # Readiness explained the outage. Which words it showed depends on when it was asked: the
    # failover itself can take less than one poll, so the failover is read from the log.
    assert problems - {"connected"}, problems
    failovers = [line for line in logs if "failing over" in line["event"]]
    assert [line["url"] for line in failovers] == [f"amqp://guest:***@127.0.0.1:{gone.port}/"]
    assert back_after[0] < FAILOVER_AFTER + 5.0
    assert set(account.rejected) <= {503}  # refused honestly while switching, never a false 202
    assert (account.lost, account.unexpected) == (0, 0)
    assert account.duplicated <= 32  # at most what was in flight (prefetch)
    assert await namespace.depth(namespace.topology.queue("moving")) == 0


async def _at_least(ledger: Ledger, count: int) -> bool:
    return len(ledger.succeeded) >= count


async def test_a_delivery_held_across_the_switch_is_not_acked_on_the_new_connection(  # noqa: PLR0915 - one scenario, step by step
    nodes: TwoNodes,
    start_conveyor: StartConveyor,
    namespace: Namespace,
) -> None:
    ledger = Ledger("held across the switch")
    holding, release = asyncio.Event(), asyncio.Event()
    sentinel_holding, sentinel_release = asyncio.Event(), asyncio.Event()
    first_ended = asyncio.Event()
    first_returned: list[bool] = []
    calls = 0

    async def hold_the_first(event: Event) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            holding.set()
            try:
                await release.wait()  # returns only after conveyor moved to the other node
                first_returned.append(True)
            finally:
                first_ended.set()  # returned, or cancelled with its channel
        elif calls == 3:  # the sentinel, unacked on the new channel while the first settles
            sentinel_holding.set()
            await sentinel_release.wait()

    conveyor = await start_conveyor(
        (subscription("held", ("chaos.*",), ledger.handler(hold_the_first)),),
        amqp_url_override=nodes.amqp_url,
        amqp_failover_after=FAILOVER_AFTER,
    )
    gone, remaining = await node_in_use(nodes.both)
    await ledger.send(conveyor, 1, concurrency=1)
    (held_id,) = ledger.accepted
    await asyncio.wait_for(holding.wait(), timeout=10)

    take_down(gone)

    async def moved() -> bool:
        return remaining.open_links == 1 and (await readiness(conveyor))[0] == 200

    await eventually(moved, timeout=20, what="conveyor ready on the other node")

    async def redelivered() -> bool:
        return ledger.calls[held_id] == 2 and await settled(conveyor, "held") == 1

    await eventually(redelivered, timeout=20, what="the held event redelivered and acked")
    await ledger.send(conveyor, 1, concurrency=1)
    (sentinel_id,) = ledger.accepted - {held_id}
    await asyncio.wait_for(sentinel_holding.wait(), timeout=10)
    release.set()  # its ack would name a delivery tag of the dead channel

    await asyncio.wait_for(first_ended.wait(), timeout=10)

    async def first_settled() -> bool:
        # The redelivery's, and the first one's if its handler returned (it may be cancelled).
        return await settled(conveyor, "held") == 1 + len(first_returned)

    await eventually(first_settled, what="the first delivery settled if it returned")
    # Its ack, had it gone to the new channel, went before the sentinel's: a PRECONDITION_FAILED
    # would close that channel under the unacked sentinel, whose ack then goes nowhere.
    sentinel_release.set()
    await ledger.settled(timeout=20)
    # Handled twice: once on the old connection (its ack could not be sent), once redelivered.
    assert ledger.calls[held_id] == 2
    assert ledger.calls[sentinel_id] == 1

    async def sentinel_acked() -> bool:
        return await settled(conveyor, "held") == 2 + len(first_returned)

    await eventually(sentinel_acked, what="the sentinel settled")
    assert await settled(conveyor, "held", "acked") == 2  # the redelivery and the sentinel
    status, checks = await readiness(conveyor)
    assert (status, checks["subscription:held"]) == (200, "consuming")
    await ledger.send(conveyor, 20, concurrency=4)
    await ledger.settled(timeout=20)
    account = ledger.account()
    assert (account.handled, account.lost) == (22, 0)
    assert await namespace.depth(namespace.topology.queue("held")) == 0


async def test_no_node_answering_names_every_address_in_readiness(
    nodes: TwoNodes, start_conveyor: StartConveyor
) -> None:
    proxy, other_node = nodes.both
    take_down(proxy)
    take_down(other_node)
    conveyor = await start_conveyor(
        amqp_url_override=nodes.amqp_url, wait_ready=False, admin_tokens=(("ops", ADMIN_TOKEN),)
    )

    async def tried_both() -> bool:
        _, checks = await readiness(conveyor)
        return "NoBrokerAnsweredError" in checks["broker"]

    await eventually(tried_both, timeout=15, what="both addresses tried")
    _, checks = await readiness(conveyor)
    assert f":{proxy.port}/" in checks["broker"]
    assert f":{other_node.port}/" in checks["broker"]
    assert "guest:guest" not in checks["broker"]  # passwords redacted

    other_node.accepting = True
    await conveyor.ready(timeout=15)
    assert other_node.open_links == 1


async def test_cli_publish_over_amqp_uses_the_first_node_that_answers(
    nodes: TwoNodes, start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    ledger = Ledger("cli publish")
    await start_conveyor((subscription("cli", ("chaos.*",), ledger.handler()),))
    take_down(nodes.first)
    environ = {"CONVEYOR_AMQP_URL": nodes.amqp_url, "CONVEYOR_NAMESPACE": namespace.name}
    arguments = build_parser(environ).parse_args(
        ["publish", "chaos.cli", "--id", "via-second", "--amqp"]
    )
    out = io.StringIO()

    assert await run_client(arguments, out) == 0
    assert out.getvalue() == "via-second\n"
    ledger.answers["via-second"] = 202
    await ledger.settled(timeout=10)
    assert set(ledger.succeeded) == {"via-second"}
