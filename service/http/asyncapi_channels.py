"""The channels and operations of the AsyncAPI document (service.http.asyncapi): the events
exchange and its publisher, each subscription's queue or partitions with its receive operation,
retry tiers and dead-letter queue, and the results exchange.

Each exchange and queue carries its AMQP binding (0.3.0); what the binding has no field for
(binding patterns, queue arguments, partitioning) goes in an `x-conveyor-*` extension.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumers.retry import delay_label
from consumers.status import DeliveryState
from consumers.subscription import Subscription
from consumers.topology import DELIVERY_LIMIT
from producers.topology import Topology
from service.http.asyncapi_messages import EVENT_MESSAGE, completion_message, event_message

__all__ = ["BINDING_VERSION", "COMPLETION_STATES", "ChannelBuilder", "completion_key"]

BINDING_VERSION = "0.3.0"
COMPLETION_STATES = (DeliveryState.SUCCEEDED, DeliveryState.DEAD_LETTERED)


def completion_key(state: DeliveryState) -> str:
    return "completion." + state.value


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


class ChannelBuilder:
    """Collects channels, operations and per-subscription messages."""

    def __init__(self, topology: Topology, vhost: str) -> None:
        self._topology = topology
        self._vhost = vhost
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def _exchange(self, name: str, kind: str) -> dict[str, Any]:
        exchange = {"name": name, "type": kind, "durable": True, "autoDelete": False}
        return {
            "amqp": {
                "is": "routingKey",
                "exchange": {**exchange, "vhost": self._vhost},
                "bindingVersion": BINDING_VERSION,
            }
        }

    def _queue(self, name: str | None = None) -> dict[str, Any]:
        queue: dict[str, Any] = {} if name is None else {"name": name}
        queue.update(durable=True, exclusive=False, autoDelete=False, vhost=self._vhost)
        return {"amqp": {"is": "queue", "queue": queue, "bindingVersion": BINDING_VERSION}}

    def add_events(self) -> None:
        topology = self._topology
        self.channels["events"] = {
            "address": "{eventType}",
            "title": topology.events_exchange,
            "description": f"The events topic exchange; its alternate exchange "
            f"`{topology.unrouted}` keeps what no subscription binds.",
            "parameters": {"eventType": {"description": "The event type (`ce-type`)."}},
            "messages": {EVENT_MESSAGE: _ref("components", "messages", EVENT_MESSAGE)},
            "bindings": self._exchange(topology.events_exchange, "topic"),
        }
        self.channels["unrouted"] = {
            "address": topology.unrouted,
            "title": topology.unrouted,
            "description": "Events no subscription's pattern matched, kept (a quorum queue "
            f"behind the fanout exchange `{topology.unrouted}`).",
            "messages": {EVENT_MESSAGE: _ref("components", "messages", EVENT_MESSAGE)},
            "bindings": self._queue(topology.unrouted),
        }
        self.operations["publishEvent"] = {
            "action": "send",
            "channel": _ref("channels", "events"),
            "title": "Publish an event",
            "summary": "The HTTP ingress publishes each event it accepts here (POST /v1/events) "
            "and answers 202 only after RabbitMQ confirmed it; other services may publish the "
            "same message themselves.",
            "bindings": {
                "amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": BINDING_VERSION}
            },
            "messages": [_ref("channels", "events", "messages", EVENT_MESSAGE)],
        }

    def add_subscription(self, subscription: Subscription, payload: dict[str, Any]) -> None:
        name = subscription.name
        topology = self._topology
        message_key = f"{name}.event"
        summary = f"An event subscription `{name}` receives" + (
            "; its data as the handler declared it." if payload else "."
        )
        self.messages[message_key] = event_message(message_key, payload, summary=summary)
        channel_id = name
        patterns = list(subscription.events)
        channel: dict[str, Any] = {
            "messages": {"event": _ref("components", "messages", message_key)},
            "x-conveyor-patterns": patterns,
        }
        arguments = (
            f"dead-letters to `{topology.dead_letter_exchange}` (routing key `{name}`), "
            f"`x-delivery-limit` {DELIVERY_LIMIT}"
        )
        if subscription.ordering is None:
            queue = topology.queue(name)
            channel.update(
                address=queue,
                title=queue,
                description=f"Quorum queue bound to `{topology.events_exchange}` with the "
                f"patterns {_listed(patterns)}; {arguments}.",
                bindings=self._queue(queue),
            )
        else:
            ordering = subscription.ordering
            exchange = topology.partition_exchange(name)
            channel.update(
                address=topology.partition_queue(name, 0)[:-1] + "{partition}",
                title=f"{exchange} partitions",
                description=f"Ordered by `{ordering.header}`: the consistent-hash exchange "
                f"`{exchange}`, bound to `{topology.events_exchange}` with the patterns "
                f"{_listed(patterns)}, spreads keys over {ordering.partitions} quorum queues "
                f"with single active consumer; {arguments}.",
                parameters={
                    "partition": {
                        "description": "The partition's number.",
                        "enum": [str(index) for index in range(ordering.partitions)],
                    }
                },
                bindings=self._queue(),
            )
            channel["x-conveyor-partitions"] = {
                "exchange": exchange,
                "type": "x-consistent-hash",
                "hashHeader": ordering.header,
                "partitions": ordering.partitions,
            }
        self.channels[channel_id] = channel
        self.operations[f"{name}.receive"] = _receive_operation(subscription, channel_id)
        for delay in subscription.tier_delays:
            self._add_retry_tier(name, delay)
        self._add_dead_letters(name)

    def _add_retry_tier(self, name: str, delay: float) -> None:
        label = delay_label(delay)
        queue = self._topology.retry_queue(name, label)
        channel_id = f"{name}.retry.{label}"
        self.channels[channel_id] = {
            "address": queue,
            "title": queue,
            "description": f"Retry tier: `x-message-ttl` {round(delay * 1000)} ms, then back to "
            f"`{self._topology.queue(name)}` through the default exchange.",
            "messages": {"retry": _ref("components", "messages", "retry")},
            "bindings": self._queue(queue),
            "x-conveyor-delay-ms": round(delay * 1000),
        }
        self.operations[f"{name}.retry.{label}"] = {
            "action": "send",
            "channel": _ref("channels", channel_id),
            "summary": f"A failed delivery of `{name}` waits here {label} (confirmed, then "
            "the original is acked).",
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": BINDING_VERSION}},
            "messages": [_ref("channels", channel_id, "messages", "retry")],
        }

    def _add_dead_letters(self, name: str) -> None:
        topology = self._topology
        queue = topology.dead_letter_queue(name)
        channel_id = f"{name}.dlq"
        self.channels[channel_id] = {
            "address": queue,
            "title": queue,
            "description": f"Dead letters of `{name}`: bound to `{topology.dead_letter_exchange}` "
            f"(direct) with routing key `{name}`. Inspect and replay them through the admin API.",
            "messages": {"deadLetter": _ref("components", "messages", "deadLetter")},
            "bindings": self._queue(queue),
        }
        self.operations[f"{name}.deadLetter"] = {
            "action": "send",
            "channel": _ref("channels", channel_id),
            "summary": f"What `{name}` cannot handle (retries exhausted, a permanent error, a "
            "malformed message) is published here through "
            f"`{topology.dead_letter_exchange}`, confirmed, then acked.",
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": BINDING_VERSION}},
            "messages": [_ref("channels", channel_id, "messages", "deadLetter")],
        }

    def add_results(self, subscriptions: list[str]) -> None:
        exchange = self._topology.results_exchange
        self.channels["results"] = {
            "address": "{completionType}.{subscription}",
            "title": exchange,
            "description": "Completion events, one per terminal outcome; bind a queue of your "
            "own to receive them.",
            "parameters": {
                "completionType": {
                    "enum": [completion_message(state)["name"] for state in COMPLETION_STATES]
                },
                "subscription": {
                    "description": "The subscription that finished the event.",
                    **({"enum": subscriptions} if subscriptions else {}),
                },
            },
            "messages": {
                key: _ref("components", "messages", key)
                for key in map(completion_key, COMPLETION_STATES)
            },
            "bindings": self._exchange(exchange, "topic"),
        }
        if not subscriptions:  # every subscription has `completions = false`
            return
        self.operations["publishCompletion"] = {
            "action": "send",
            "channel": _ref("channels", "results"),
            "summary": "Each terminal outcome of a subscription with completions on, published "
            "before the delivery is acked.",
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": BINDING_VERSION}},
            "messages": [
                _ref("channels", "results", "messages", key)
                for key in map(completion_key, COMPLETION_STATES)
            ],
        }


def _receive_operation(subscription: Subscription, channel_id: str) -> dict[str, Any]:
    retry = subscription.retry
    tiers = [delay_label(delay) for delay in subscription.tier_delays]
    ordering = subscription.ordering
    return {
        "action": "receive",
        "channel": _ref("channels", channel_id),
        "title": f"Subscription {subscription.name}",
        "summary": f"Handles the events matching {_listed(subscription.events)}: "
        f"{retry.in_process} attempt(s) per delivery, then "
        + (
            f"the retry tiers {', '.join(tiers)}, then the dead-letter queue."
            if tiers
            else (
                "the dead-letter queue."
                if ordering is None
                else "waits in process, holding its key, then the dead-letter queue."
            )
        ),
        "bindings": {"amqp": {"ack": True, "bindingVersion": BINDING_VERSION}},
        "messages": [_ref("channels", channel_id, "messages", "event")],
        "x-conveyor-subscription": {
            "patterns": list(subscription.events),
            "prefetch": subscription.prefetch,
            "concurrency": subscription.concurrency,
            "timeoutSeconds": subscription.timeout,
            "attemptsInProcess": retry.in_process,
            "retryDelaysSeconds": list(retry.delays),
            "deduplicate": subscription.deduplicate,
            "completions": subscription.completions,
            "orderedBy": None if ordering is None else ordering.header,
        },
    }


def _listed(patterns: Sequence[str]) -> str:
    return ", ".join(f"`{pattern}`" for pattern in patterns)
