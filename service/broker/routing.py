"""Which subscriptions an event type reaches: RabbitMQ's topic matching, for the status record.

The ingress records which subscriptions' patterns match an accepted event's type (each shows as
`pending` there until its consumer reports), or that none does (`unrouted`): the same decision the
topic exchange makes with the bindings declared from the same subscriptions file. The matching
itself lives in consumers.topics, where the in-memory harness (consumers.testing) uses it too.
"""

from __future__ import annotations

from consumers.topics import routed_subscriptions, topic_matches

__all__ = ["routed_subscriptions", "topic_matches"]
