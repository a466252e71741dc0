"""A subscription: which events, which handler, how much in parallel."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumers.event import Handler
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
