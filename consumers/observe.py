"""What the consumer runtime reports about each delivery, for whoever measures or traces it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from consumers.pacing import PacingObserver

__all__ = [
    "NO_DELIVERY_OBSERVER",
    "NO_HANDLER_TRACER",
    "DeliveryObserver",
    "FailureReport",
    "HandlerTracer",
    "MarkFailed",
]


class DeliveryObserver(PacingObserver, Protocol):
    def handler_ran(self, subscription: str, seconds: float) -> None:
        """One delivery's handler attempts (in-process retries included) took `seconds`."""
        ...

    def delivery_settled(self, subscription: str, outcome: str) -> None:
        """`outcome`: acked, retry-scheduled, dead-lettered, skipped, filtered or returned."""
        ...

    def event_filtered(self, subscription: str) -> None:
        """A delivery the subscription's filters left out was acked unhandled."""
        ...

    def retry_scheduled(self, subscription: str, tier: str) -> None: ...

    def dedup_lookup(self, subscription: str, *, skipped: bool) -> None:
        """A delivery of a deduplicating subscription asked the store whether its event already
        succeeded, or (`skipped`) did not need to: it was provably the first copy."""
        ...

    def failure_seen(self, subscription: str, failure: FailureReport) -> None:
        """A delivery failed and was moved to a retry tier or the dead-letter queue."""
        ...


@dataclass(frozen=True, slots=True)
class FailureReport:
    event_id: str
    event_type: str
    error_class: str
    error_message: str
    outcome: str  # retry-scheduled or dead-lettered
    at: float  # Unix seconds


# Called with the error class and message when the delivery's attempts ended in failure.
MarkFailed = Callable[[str, str], None]


class HandlerTracer(Protocol):
    def handling(
        self, subscription: str, event_id: str, event_type: str, traceparent: str | None
    ) -> contextlib.AbstractContextManager[MarkFailed]:
        """Wraps one delivery's handler attempts: a span joined to the publisher's `traceparent`."""
        ...


class _NoDeliveryObserver:
    def handler_ran(self, subscription: str, seconds: float) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def delivery_settled(self, subscription: str, outcome: str) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def retry_scheduled(self, subscription: str, tier: str) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def event_filtered(self, subscription: str) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def rate_wait_began(self, subscription: str) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def rate_wait_ended(self, subscription: str, seconds: float) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def dedup_lookup(self, subscription: str, *, skipped: bool) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def failure_seen(self, subscription: str, failure: FailureReport) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None


class _NoHandlerTracer:
    def handling(
        self,
        subscription: str,  # noqa: ARG002 - tracing is off: nothing to record
        event_id: str,  # noqa: ARG002 - tracing is off: nothing to record
        event_type: str,  # noqa: ARG002 - tracing is off: nothing to record
        traceparent: str | None,  # noqa: ARG002 - tracing is off: nothing to record
    ) -> contextlib.AbstractContextManager[MarkFailed]:
        return contextlib.nullcontext(_ignore_failure)


def _ignore_failure(error_class: str, message: str) -> None:  # noqa: ARG001 - tracing is off
    return None


NO_DELIVERY_OBSERVER: DeliveryObserver = _NoDeliveryObserver()
NO_HANDLER_TRACER: HandlerTracer = _NoHandlerTracer()
