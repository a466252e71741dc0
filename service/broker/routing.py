"""Which subscriptions an event type reaches: RabbitMQ's topic matching, for the status record.

The ingress records which subscriptions' patterns match an accepted event's type (each shows as
`pending` there until its consumer reports), or that none does (`unrouted`): the same decision the
topic exchange makes with the bindings declared from the same subscriptions file.
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
