"""A subscription: which events, which handler, how much in parallel."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumers.event import Handler
from consumers.ordering import Ordering
from consumers.retry import RetryPolicy

__all__ = ["Subscription"]


@dataclass(frozen=True, slots=True)
class Subscription:
    name: str
    events: tuple[str, ...]  # AMQP topic patterns over the event type
    handler: Handler
    handler_path: str  # "module:function", for logs and readiness
    prefetch: int = 32
    concurrency: int = 16
    timeout: float = 30.0  # seconds one handler attempt may run
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Ack a delivery of an event that already succeeded here without running the handler again.
    deduplicate: bool = True
    # Publish each terminal outcome to {ns}.results; off when nobody listens, which saves a
    # confirmed publish per event (the status record is written either way).
    completions: bool = True
    # Events of one key handled one at a time, in publish order (see consumers.ordering).
    ordering: Ordering | None = None
    # Seconds of the archive replayed into it once, when it is first declared (None: none).
    backfill: float | None = None

    @property
    def tier_delays(self) -> tuple[float, ...]:
        """Delays that wait in broker-side tier queues; an ordered subscription has none: it
        waits them out in process, holding the event's key."""
        return () if self.ordering is not None else self.retry.delays
