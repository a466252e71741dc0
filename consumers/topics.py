"""AMQP topic matching: which subscriptions' patterns an event type matches.

The decision RabbitMQ's topic exchange makes with the bindings declared from the subscriptions
file, made in process: for the ingress's status record (service.broker.routing) and for the
in-memory harness (consumers.testing), from the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from consumers.subscription import Subscription

__all__ = ["routed_subscriptions", "topic_matches"]


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic semantics: words split on '.', '*' is one word, '#' is zero or more."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


@functools.lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # '#' takes none of the words, or one more and stays.
        return _match(rest, words) or (bool(words) and _match(pattern, words[1:]))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


def routed_subscriptions(subscriptions: Sequence[Subscription], event_type: str) -> list[str]:
    return [
        subscription.name
        for subscription in subscriptions
        if any(topic_matches(pattern, event_type) for pattern in subscription.events)
    ]
