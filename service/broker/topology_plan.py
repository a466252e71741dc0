"""`conveyor topology`: what conveyor declares on RabbitMQ, printed, or declared with --apply.

The printout runs the very functions the service declares with, against a channel that only
records, so what is printed is what would be declared, argument for argument.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractChannel

from consumers.subscription import Subscription
from consumers.topology import declare_subscription_queues
from producers.delay import DelayChain, declare_delay_chain
from producers.topology import Topology, declare_events_exchange, declare_results_exchange
from service.archive.stream import ArchiveSpec, declare_archive

__all__ = ["apply_topology", "plan_topology", "render_topology"]


class _Named:
    def __init__(self, recorder: _RecordingChannel, name: str, *, exchange: bool = False) -> None:
        self._recorder = recorder
        self.name = name
        self._exchange = exchange

    async def bind(self, exchange: Any, routing_key: str | None = None) -> None:
        source = exchange if isinstance(exchange, str) else exchange.name
        if self._exchange:  # an exchange-to-exchange binding (an ordered subscription's)
            self._recorder.record(
                {
                    "kind": "exchange-binding",
                    "exchange": source,
                    "destination": self.name,
                    "routing_key": routing_key,
                }
            )
            return
        self._recorder.record(
            {"kind": "binding", "exchange": source, "queue": self.name, "routing_key": routing_key}
        )


class _RecordingChannel:
    """Stands in for a channel: remembers each declaration instead of sending it."""

    def __init__(self) -> None:
        self.entities: list[dict[str, Any]] = []

    async def declare_exchange(
        self,
        name: str,
        type: aio_pika.ExchangeType | str,  # noqa: A002 - aio-pika's parameter name
        *,
        durable: bool,
        arguments: dict[str, Any] | None = None,
    ) -> _Named:
        self.record(
            {
                "kind": "exchange",
                "name": name,
                "type": type.value if isinstance(type, aio_pika.ExchangeType) else type,
                "durable": durable,
                "arguments": dict(arguments or {}),
            }
        )
        return _Named(self, name, exchange=True)

    async def declare_queue(
        self, name: str, *, durable: bool, arguments: dict[str, Any] | None = None
    ) -> _Named:
        self.record(
            {"kind": "queue", "name": name, "durable": durable, "arguments": dict(arguments or {})}
        )
        return _Named(self, name)

    def record(self, entity: dict[str, Any]) -> None:
        # Every subscription declares the shared dead-letter exchange again; list it once.
        if entity not in self.entities:
            self.entities.append(entity)


async def _declare(
    channel: AbstractChannel,
    topology: Topology,
    subscriptions: Sequence[Subscription],
    delay_levels: int,
    archive: ArchiveSpec | None,
) -> None:
    await declare_events_exchange(channel, topology)
    await declare_results_exchange(channel, topology)
    if delay_levels:
        await declare_delay_chain(channel, DelayChain(topology, delay_levels))
    if archive is not None:
        await declare_archive(channel, topology, archive)
    for subscription in subscriptions:
        await declare_subscription_queues(channel, topology, subscription)


async def plan_topology(
    topology: Topology,
    subscriptions: Sequence[Subscription],
    *,
    delay_levels: int = 0,
    archive: ArchiveSpec | None = None,
) -> list[dict[str, Any]]:
    """Every exchange, queue and binding conveyor declares, in declaration order (with the
    delay chain's `delay_levels` levels, producers.delay)."""
    recorder = _RecordingChannel()
    # The recorder has the methods the declaration functions call, and no others.
    await _declare(
        cast("AbstractChannel", recorder), topology, subscriptions, delay_levels, archive
    )
    return recorder.entities


async def apply_topology(
    amqp_urls: tuple[str, ...],  # a tuple, not Sequence: a lone str would pass as one
    topology: Topology,
    subscriptions: Sequence[Subscription],
    *,
    ssl_context: ssl.SSLContext | None = None,
    delay_levels: int = 0,
    archive: ArchiveSpec | None = None,
) -> None:
    """Declare it all on the broker (idempotent), as a starting conveyor would, on the first
    of `amqp_urls` that answers (the nodes of one cluster share their definitions)."""
    unreachable: OSError | None = None
    for url in amqp_urls:
        try:
            connection = await aio_pika.connect(url, ssl_context=ssl_context)
        except OSError as error:  # aiormq's connection errors are ConnectionErrors too
            unreachable = error
            continue
        async with connection:
            await _declare(
                await connection.channel(), topology, subscriptions, delay_levels, archive
            )
        return
    if unreachable is not None:
        raise unreachable


def render_topology(entities: Sequence[dict[str, Any]]) -> str:
    """One line per entity, for people."""
    lines = []
    for entity in entities:
        arguments = " ".join(f"{k}={v}" for k, v in entity.get("arguments", {}).items())
        match entity["kind"]:
            case "exchange":
                line = f"exchange {entity['name']} ({entity['type']}) {arguments}"
            case "queue":
                line = f"queue    {entity['name']} {arguments}"
            case "exchange-binding":
                key = f" [{entity['routing_key']}]" if entity["routing_key"] is not None else ""
                line = f"binding  {entity['exchange']} -> exchange {entity['destination']}{key}"
            case _:
                key = f" [{entity['routing_key']}]" if entity["routing_key"] is not None else ""
                line = f"binding  {entity['exchange']} -> {entity['queue']}{key}"
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"
