"""`conveyor topology`: the printed plan is what gets declared, and --apply declares it."""

from __future__ import annotations

import argparse
import io
from dataclasses import replace

import aio_pika
import orjson

from consumers import RetryPolicy
from service.cli import topology_command
from service.settings import Settings
from tests.conftest import Namespace, subscription
from tests.support.recorder import Recorder


async def test_apply_declares_exactly_what_the_plan_prints(namespace: Namespace) -> None:
    sub = subscription("orders", ("order.*", "refund.#"), Recorder(), retry=RetryPolicy(1, (5.0,)))
    namespace.register(sub)
    settings = replace(Settings(), amqp_url=namespace.amqp_url, namespace=namespace.name)
    out = io.StringIO()

    code = await topology_command(settings, (sub,), argparse.Namespace(apply=True, json=True), out)

    assert code == 0
    entities = orjson.loads(out.getvalue())  # stdout is the plan alone
    names = {(e["kind"], e.get("name")) for e in entities if e["kind"] != "binding"}
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
    }
    bindings = {
        (e["exchange"], e["queue"], e["routing_key"]) for e in entities if e["kind"] == "binding"
    }
    assert (f"{ns}.events", f"{ns}.orders", "refund.#") in bindings
    # Re-declaring every printed queue and exchange with its printed arguments succeeds: the
    # broker refuses a declaration whose arguments differ from the existing entity's.
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        for entity in entities:
            if entity["kind"] == "queue":
                await channel.declare_queue(
                    entity["name"], durable=True, arguments=entity["arguments"]
                )
            elif entity["kind"] == "exchange":
                await channel.declare_exchange(
                    entity["name"],
                    aio_pika.ExchangeType(entity["type"]),
                    durable=True,
                    arguments=entity["arguments"],
                )
