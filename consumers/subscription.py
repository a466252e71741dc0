"""A subscription: which events, which handler, how much in parallel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pydantic

from consumers.event import Handler
from consumers.filters import Filter
from consumers.ordering import Ordering
from consumers.pacing import RateLimit
from consumers.payloads import payload_adapter
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
    # Publish each terminal outcome to {ns}.results, confirmed before the ack. Opt-in: the
    # status API answers without it. None: as CONVEYOR_COMPLETIONS says (service.app), else off.
    completions: bool | None = None
    # Events of one key handled one at a time, in publish order (see consumers.ordering).
    ordering: Ordering | None = None
    # Attribute filters (consumers.filters): an event must pass all of them to be handled; one
    # that does not is acked with the status `filtered`.
    filters: tuple[Filter, ...] = ()
    # At most this many handler starts a second in this process (consumers.pacing).
    rate: RateLimit | None = None
    # Events whose type matches `events` are validated at the ingress too (an HTTP publish of
    # data the handler's Event[Model] rejects is answered 422); needs a typed handler.
    validate_at_ingress: bool = False
    # What validates `data` for a handler declared with Event[Model], read from its annotation
    # once here; None for an untyped handler. Raises HandlerSignatureError for a bad one.
    payload: pydantic.TypeAdapter[Any] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", payload_adapter(self.handler))

    # Seconds of the archive replayed into it once, when it is first declared (None: none).
    backfill: float | None = None

    @property
    def tier_delays(self) -> tuple[float, ...]:
        """Delays that wait in broker-side tier queues; an ordered subscription has none: it
        waits them out in process, holding the event's key."""
        return () if self.ordering is not None else self.retry.delays
