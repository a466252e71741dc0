"""`conveyor topology`: the printed plan is what gets declared, and --apply declares it."""

from __future__ import annotations

import argparse
import io
from dataclasses import replace

import aio_pika
import orjson

from consumers.ordering import Ordering
from consumers.retry import RetryPolicy
from service.cli.main import topology_command
from service.settings import Settings
from tests.conftest import subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder


async def test_apply_declares_exactly_what_the_plan_prints(namespace: Namespace) -> None:
    sub = subscription("orders", ("order.*", "refund.#"), Recorder(), retry=RetryPolicy(1, (5.0,)))
    ledger = replace(
        subscription("ledger", ("account.*",), Recorder(), retry=RetryPolicy(1, (5.0,))),
        ordering=Ordering("partitionkey", 2),
    )
    namespace.register(sub)
    namespace.register(ledger)
    # A delay chain of three levels (delays up to 7 s): its entities are listed too.
    settings = replace(
        Settings(), amqp_url=namespace.amqp_url, namespace=namespace.name, max_delay=7.0
    )
    namespace.delay_levels = 3
    out = io.StringIO()
    printed = io.StringIO()

    code = await topology_command(
        settings, (sub, ledger), argparse.Namespace(apply=True, json=True), out
    )
    await topology_command(
        settings, (sub, ledger), argparse.Namespace(apply=False, json=False), printed
    )

    assert code == 0
    entities = orjson.loads(out.getvalue())  # stdout is the plan alone
    names = {(e["kind"], e.get("name")) for e in entities if "binding" not in e["kind"]}
    ns = namespace.name
    assert names == {
        ("exchange", f"{ns}.unrouted"),
        ("queue", f"{ns}.unrouted"),
        ("exchange", f"{ns}.events"),
        ("exchange", f"{ns}.results"),
        ("exchange", f"{ns}.dlx"),
        ("queue", f"{ns}.orders.dlq"),
        ("queue", f"{ns}.orders"),
        ("queue", f"{ns}.orders.retry.5s"),
        # The ordered subscription: a hash exchange over its partitions, no queue or tiers.
        ("queue", f"{ns}.ledger.dlq"),
        ("exchange", f"{ns}.ledger.partitions"),
        ("queue", f"{ns}.ledger.p0"),
        ("queue", f"{ns}.ledger.p1"),
        *(
            (kind, f"{ns}.{name}")
            for kind in ("exchange", "queue")
            for name in ("due", "delay.0", "delay.1", "delay.2")
        ),
    }
    bindings = {
        (e["exchange"], e.get("queue", e.get("destination")), e["routing_key"])
        for e in entities
        if "binding" in e["kind"]
    }
    assert (f"{ns}.events", f"{ns}.orders", "refund.#") in bindings
    assert (f"{ns}.events", f"{ns}.ledger.partitions", "account.*") in bindings
    assert (f"{ns}.ledger.partitions", f"{ns}.ledger.p1", "20") in bindings
    assert (f"{ns}.delay.2", f"{ns}.delay.2", "*.*.1.#") in bindings
    assert (f"{ns}.delay.2", f"{ns}.delay.1", "*.*.0.#") in bindings
    assert (f"{ns}.delay.0", f"{ns}.due", "0.#") in bindings
    text = printed.getvalue()
    assert f"exchange {ns}.ledger.partitions (x-consistent-hash)" in text
    assert f"binding  {ns}.events -> exchange {ns}.ledger.partitions [account.*]" in text
    # Re-declaring every printed queue and exchange with its printed arguments succeeds: the
    # broker refuses a declaration whose arguments differ from the existing entity's.
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        for entity in entities:
            if entity["kind"] == "queue":
                await channel.declare_queue(
                    entity["name"], durable=True, arguments=entity["arguments"]
                )
            elif entity["kind"] == "exchange":
                # A plugin's type (x-consistent-hash) is no aio_pika.ExchangeType: the name
                # goes to the broker as it is.
                await channel.declare_exchange(
                    entity["name"], entity["type"], durable=True, arguments=entity["arguments"]
                )
        # What --apply bound routes: a keyed event reaches exactly one partition of the ledger.
        events = await channel.get_exchange(f"{ns}.events")
        await events.publish(
            aio_pika.Message(b"{}", headers={"ce-partitionkey": "acct-7"}),
            routing_key="account.opened",
        )
        depths = [
            await namespace.depth(namespace.topology.partition_queue("ledger", index))
            for index in range(2)
        ]
        assert sorted(depths) == [0, 1]
