"""What the runtime tells about each delivery, and the ledger it tells it to.

The ledger lives in the service (over its store); the runtime only sees this protocol, so data
still flows one way: the runtime reports, it never reads anything but "did this already succeed".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from consumers.dead_letter import Failure

__all__ = ["DeliveryState", "DeliveryUpdate", "StatusLedger"]


class DeliveryState(enum.StrEnum):
    """Where one event stands for one subscription."""

    PENDING = "pending"  # accepted and routed; no handler has started yet
    PROCESSING = "processing"  # a handler attempt is running
    RETRYING = "retrying"  # waiting in a retry tier until `next_attempt_at`
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead-lettered"
    FILTERED = "filtered"  # routed here by its type, but the subscription's filters left it out

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def rank(self) -> int:
        # Within one attempt count, a later state wins over an earlier one; the store keeps the
        # highest (replays, attempts, rank): an update that arrives late never rolls a status
        # back, and a replay from the DLQ starts over.
        return _RANKS[self]


_RANKS = {
    DeliveryState.PENDING: 0,
    DeliveryState.PROCESSING: 1,
    DeliveryState.RETRYING: 2,
    DeliveryState.SUCCEEDED: 3,
    DeliveryState.DEAD_LETTERED: 3,
    DeliveryState.FILTERED: 3,
}
_TERMINAL = frozenset(
    (DeliveryState.SUCCEEDED, DeliveryState.DEAD_LETTERED, DeliveryState.FILTERED)
)


# Not frozen: a frozen dataclass sets each of its 12 fields through object.__setattr__, and a
# delivery makes two or three of these. Treat it as immutable once built.
@dataclass(slots=True)
class DeliveryUpdate:
    """One event's new state for one subscription, as observed at `at` (Unix seconds)."""

    event_id: str
    source: str
    subscription: str
    state: DeliveryState
    attempts: int  # handler attempts started so far, this one included
    at: float
    attributes: Mapping[str, str]  # the event's context attributes, for its status record
    replays: int = 0  # times it was replayed from the DLQ: a replay starts a new round
    next_attempt_at: float | None = None  # for RETRYING
    failure: Failure | None = None  # the last error, for RETRYING and DEAD_LETTERED
    reason: str | None = None  # why it was dead-lettered
    # When the first attempt started, for an update that replaced its `processing` note
    # before the note was written (consumers.reporting); a `processing` update's is `at`.
    first_attempt_at: float | None = None

    def first_attempt_started(self, at: float) -> DeliveryUpdate:
        """This update with `first_attempt_at`; `dataclasses.replace` costs ten times more."""
        return DeliveryUpdate(
            self.event_id,
            self.source,
            self.subscription,
            self.state,
            self.attempts,
            self.at,
            self.attributes,
            self.replays,
            self.next_attempt_at,
            self.failure,
            self.reason,
            at,
        )


class StatusLedger(Protocol):
    async def succeeded_before(self, subscription: str, source: str, event_id: str) -> bool:
        """True when this event already succeeded for this subscription."""
        ...

    def vouches_first_copy(self, mark: object, source: str, event_id: str) -> bool:
        """Whether `mark` (producers.first_copy's header, as delivered) is the first-copy mark
        conveyor's ingress gave this event."""
        ...

    def note(self, update: DeliveryUpdate) -> None:
        """Record `update` soon, in order with the others; do not wait for it."""
        ...

    async def record(self, update: DeliveryUpdate) -> None:
        """Record `update`; return once it is stored."""
        ...

    async def record_many(self, updates: Sequence[DeliveryUpdate]) -> None:
        """Record `updates` together, in order; return once they are stored."""
        ...
