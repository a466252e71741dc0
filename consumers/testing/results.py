"""What one `TestConveyor.send` came to, per subscription the event was routed to."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumers.event import Event
from consumers.settling import Outcome
from consumers.status import DeliveryState

__all__ = ["Attempt", "DeadLetter", "SendResult", "SubscriptionRun"]

_FINAL_STATES = {
    Outcome.ACKED.value: DeliveryState.SUCCEEDED.value,
    Outcome.SKIPPED.value: DeliveryState.SUCCEEDED.value,  # it had succeeded before
    Outcome.DEAD_LETTERED.value: DeliveryState.DEAD_LETTERED.value,
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call of the handler: its number (`event.attempt`), and what it raised (None: it
    returned). A timed-out attempt's error is the `HandlerTimeoutError` the runtime records."""

    number: int
    error: BaseException | None
    at: float  # on the harness's virtual clock, seconds since it started

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A copy in `{ns}.{subscription}.dlq`, as an operator would find it there."""

    subscription: str
    reason: str  # x-conveyor-reason: retries-exhausted, permanent-error, malformed, ...
    error_class: str | None
    error_message: str | None
    attempts: int  # x-conveyor-attempts: handler attempts made before it was dead-lettered
    headers: Mapping[str, Any] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(slots=True)
class SubscriptionRun:
    """One event's way through one subscription: every delivery of it, until its final outcome."""

    subscription: str
    attempts: list[Attempt] = field(default_factory=list)
    settlements: list[str] = field(default_factory=list)  # each delivery's Outcome value
    dead_letter: DeadLetter | None = None
    completions: list[Event] = field(default_factory=list)
    # Broker-side bookkeeping: copies queued, waiting in a tier or unacked; deliveries running.
    live: int = 0
    running: int = 0

    @property
    def outcome(self) -> str:
        """`succeeded` or `dead-lettered`, as the event's status says once it is settled."""
        for settled in reversed(self.settlements):
            if settled in _FINAL_STATES:
                return _FINAL_STATES[settled]
        return DeliveryState.PENDING.value

    @property
    def skipped(self) -> bool:
        """It had succeeded here before: acked without running the handler (deduplication)."""
        return bool(self.settlements) and self.settlements[-1] == Outcome.SKIPPED.value

    @property
    def errors(self) -> list[BaseException]:
        """The error of each failed attempt, in order."""
        return [attempt.error for attempt in self.attempts if attempt.error is not None]


@dataclass(slots=True)
class SendResult:
    """What became of one sent event, per subscription it was routed to."""

    event_id: str
    source: str
    event_type: str
    runs: dict[str, SubscriptionRun]
    done: asyncio.Future[None] = field(repr=False)

    @property
    def outcomes(self) -> dict[str, str]:
        """Per subscription: `succeeded` or `dead-lettered` (empty: no subscription matched)."""
        return {name: run.outcome for name, run in self.runs.items()}

    @property
    def attempts(self) -> dict[str, list[Attempt]]:
        """Per subscription: every handler attempt, across retries and the ladder."""
        return {name: list(run.attempts) for name, run in self.runs.items()}

    @property
    def dead_letters(self) -> dict[str, DeadLetter]:
        """Per subscription that dead-lettered the event: its copy in the DLQ."""
        return {name: run.dead_letter for name, run in self.runs.items() if run.dead_letter}

    @property
    def completions(self) -> list[Event]:
        """The completion events that would be published to `{ns}.results`, in order."""
        return [event for run in self.runs.values() for event in run.completions]

    @property
    def settled(self) -> bool:
        return all(run.live == 0 and run.running == 0 for run in self.runs.values())
