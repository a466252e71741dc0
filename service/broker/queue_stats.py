"""Polling queue depths and consumer counts for the metrics, with passive declares.

The management plugin would give more, but a deployment may not run it; a passive declare is
plain AMQP and answers the two numbers that matter: messages ready and consumers attached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from consumers.retry import delay_label
from consumers.subscription import Subscription
from consumers.topology import subscription_queue_names
from producers.delay import DelayChain
from producers.publisher import BROKER_FAILURES
from producers.topology import Topology
from service.cancellation import stop_if_cancelled
from service.observability.metrics import Metrics

__all__ = ["QueueStats", "poll_queue_stats", "read_queue_stats"]

_log = structlog.get_logger(component="metrics")
POLL_SECONDS = 10.0
# RuntimeError: aio-pika's channel() on a connection that is closed or reconnecting.
_POLL_FAILURES: tuple[type[Exception], ...] = (*BROKER_FAILURES, TimeoutError, RuntimeError)


async def poll_queue_stats(
    connection: AbstractRobustConnection,
    topology: Topology,
    subscriptions: Sequence[Subscription],
    metrics: Metrics,
    *,
    interval: float = POLL_SECONDS,
    chain: DelayChain | None = None,
) -> None:
    """Refresh the queue gauges every `interval` seconds until cancelled."""
    channel: AbstractRobustChannel | None = None
    while True:
        if chain is not None:
            try:
                if channel is None or channel.is_closed:
                    channel = await connection.channel()
                await _poll_chain(channel, chain, metrics)
            except _POLL_FAILURES as error:
                stop_if_cancelled(error)
                _log.warning("delay chain stats poll failed", error=str(error))
                channel = None
        for subscription in subscriptions:
            # One subscription at a time: a queue missing for one must not blind the rest.
            try:
                if channel is None or channel.is_closed:
                    channel = await connection.channel()
                await _poll_one(channel, topology, subscription, metrics)
            except _POLL_FAILURES as error:
                stop_if_cancelled(error)
                # A missing queue closes the channel (404); the next one opens another.
                _log.warning(
                    "queue stats poll failed", subscription=subscription.name, error=str(error)
                )
                channel = None
            except Exception as error:  # noqa: BLE001 - the poller must outlive any surprise
                stop_if_cancelled(error)
                _log.exception("queue stats poll failed", subscription=subscription.name)
                channel = None
        await asyncio.sleep(interval)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One subscription's queues as RabbitMQ counts them now (messages ready, consumers)."""

    messages: int
    consumers: int
    retry_tiers: dict[str, int]  # delay label -> messages waiting in that tier
    dead_letters: int
    # queue name -> (messages, consumers) of each queue the events wait in (an ordered
    # subscription's partitions; the subscription queue otherwise)
    queues: dict[str, tuple[int, int]]


async def read_queue_stats(
    channel: AbstractRobustChannel, topology: Topology, subscription: Subscription
) -> QueueStats:
    """Passive declares of the subscription's queues; raises if one is missing."""
    name = subscription.name
    # robust=False: aio-pika's robust channel answers a repeated passive declare from its cache
    # (with the first call's counts) and would re-declare the queue after a reconnect.
    queues = {}
    async with asyncio.timeout(5.0):
        # An ordered subscription's events wait in its partitions: counted together.
        for queue_name in subscription_queue_names(topology, subscription):
            main = await channel.declare_queue(queue_name, passive=True, robust=False)
            queues[queue_name] = (
                main.declaration_result.message_count or 0,
                main.declaration_result.consumer_count or 0,
            )
        dead = await channel.declare_queue(
            topology.dead_letter_queue(name), passive=True, robust=False
        )
        tiers = {}
        for delay in subscription.tier_delays:
            label = delay_label(delay)
            tier = await channel.declare_queue(
                topology.retry_queue(name, label), passive=True, robust=False
            )
            tiers[label] = tier.declaration_result.message_count or 0
    return QueueStats(
        messages=sum(messages for messages, _ in queues.values()),
        consumers=sum(consumers for _, consumers in queues.values()),
        retry_tiers=tiers,
        dead_letters=dead.declaration_result.message_count or 0,
        queues=queues,
    )


async def _poll_one(
    channel: AbstractRobustChannel,
    topology: Topology,
    subscription: Subscription,
    metrics: Metrics,
) -> None:
    stats = await read_queue_stats(channel, topology, subscription)
    name = subscription.name
    metrics.note_queue_sample(name, time.monotonic(), stats.messages)
    metrics.queue_messages.labels(name, "main").set(stats.messages)
    metrics.queue_messages.labels(name, "dlq").set(stats.dead_letters)
    metrics.queue_messages.labels(name, "retry").set(sum(stats.retry_tiers.values()))
    metrics.queue_consumers.labels(name).set(stats.consumers)


async def _poll_chain(channel: AbstractRobustChannel, chain: DelayChain, metrics: Metrics) -> None:
    # Level L holds events whose remaining wait has no bit above L: due within 2**(L+1) s.
    async with asyncio.timeout(5.0):
        for index in range(chain.levels):
            level = await channel.declare_queue(chain.level(index), passive=True, robust=False)
            waiting = level.declaration_result.message_count or 0
            metrics.delayed_waiting.labels(str(2 << index)).set(waiting)
