"""Headers conveyor adds when it moves a message into the retry ladder or a dead-letter queue.

They travel with the message (alongside RabbitMQ's own `x-death`), so whoever inspects a DLQ
entry sees why it is there without conveyor's logs.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumers.errors import PermanentError
from producers.event import format_time

__all__ = [
    "CONVEYOR_PREFIX",
    "ORIGINAL_ROUTING_KEY",
    "REPLAY",
    "DeadLetterReason",
    "Failure",
    "Headers",
    "failure_headers",
    "read_int",
    "replay_headers",
    "without_conveyor_headers",
]

CONVEYOR_PREFIX = "x-conveyor-"
ATTEMPTS = "x-conveyor-attempts"  # handler attempts made so far
REPLAYS = "x-conveyor-replays"  # times an operator sent it back from the dead-letter queue
# The archive replay (its id) a message was sent again by: its dedup and status are its own.
REPLAY = "x-conveyor-replay"
RETRIES = "x-conveyor-retries"  # passes through the broker-side ladder so far
REASON = "x-conveyor-reason"
ERROR_CLASS = "x-conveyor-error-class"
ERROR_MESSAGE = "x-conveyor-error-message"
ERROR_TRACEBACK = "x-conveyor-error-traceback"
ERROR_DETAIL = "x-conveyor-error-detail"  # what the error carried, e.g. a response body's start
FIRST_FAILURE = "x-conveyor-first-failure"
LAST_FAILURE = "x-conveyor-last-failure"
ORIGINAL_EXCHANGE = "x-conveyor-original-exchange"
ORIGINAL_ROUTING_KEY = "x-conveyor-original-routing-key"
MAX_MESSAGE_CHARS = 1000
MAX_TRACEBACK_CHARS = 2000
MAX_DETAIL_BYTES = 1000

Headers = dict[str, Any]


class DeadLetterReason(enum.StrEnum):
    RETRIES_EXHAUSTED = "retries-exhausted"
    PERMANENT = "permanent-error"
    MALFORMED = "malformed"
    # The data did not validate against the handler's Event[Model]: it will not next time.
    INVALID_DATA = "invalid-data"
    # No copy could be made (it does not fit one frame, or RabbitMQ refused it): the queue's own
    # dead-lettering took the message as it is, without conveyor's headers.
    UNMOVABLE = "unmovable"
    # A webhook endpoint answered 410 Gone.
    ENDPOINT_GONE = "endpoint-gone"

    @classmethod
    def permanent(cls, failure: Failure) -> DeadLetterReason:
        """The reason a permanent failure names (its PermanentError subclass), else PERMANENT."""
        try:
            return cls(failure.reason) if failure.reason else cls.PERMANENT
        except ValueError:
            return cls.PERMANENT


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the last attempt failed."""

    error_class: str
    message: str
    traceback: str
    detail: str | None = None
    reason: str | None = None  # a PermanentError's dead-letter reason

    @classmethod
    def from_exception(cls, error: BaseException) -> Failure:
        lines = traceback.format_exception(error)
        detail = getattr(error, "detail", None)
        return cls(
            error_class=type(error).__name__,
            message=str(error)[:MAX_MESSAGE_CHARS],
            # The innermost frames say most; keep the tail.
            traceback="".join(lines)[-MAX_TRACEBACK_CHARS:],
            detail=_bounded(detail) if isinstance(detail, str) and detail else None,
            reason=error.reason if isinstance(error, PermanentError) else None,
        )


def _bounded(text: str) -> str:
    """At most MAX_DETAIL_BYTES of UTF-8, cut on a character boundary."""
    return text.encode()[:MAX_DETAIL_BYTES].decode("utf-8", errors="ignore")


def read_int(headers: Mapping[str, Any], name: str) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def failure_headers(
    headers: Mapping[str, Any],
    *,
    failure: Failure,
    attempts: int,
    exchange: str,
    routing_key: str,
    now: datetime | None = None,
    reason: DeadLetterReason | None = None,
    retries: int | None = None,
) -> Headers:
    """The message's headers plus conveyor's account of the failure (pure; no I/O)."""
    moment = format_time(now or datetime.now(UTC))
    updated: Headers = dict(headers)
    updated[ATTEMPTS] = attempts
    updated[ERROR_CLASS] = failure.error_class
    updated[ERROR_MESSAGE] = failure.message
    updated[ERROR_TRACEBACK] = failure.traceback
    if failure.detail is None:
        updated.pop(ERROR_DETAIL, None)  # an earlier attempt's detail is not this one's
    else:
        updated[ERROR_DETAIL] = failure.detail
    updated.setdefault(FIRST_FAILURE, moment)
    updated[LAST_FAILURE] = moment
    # The first hop keeps where the event was first published; later hops come from the ladder.
    updated.setdefault(ORIGINAL_EXCHANGE, exchange)
    updated.setdefault(ORIGINAL_ROUTING_KEY, routing_key)
    if retries is not None:
        updated[RETRIES] = retries
    if reason is None:
        updated.pop(REASON, None)  # a retry copy is not dead (yet)
    else:
        updated[REASON] = reason.value
    return updated


def without_conveyor_headers(headers: Mapping[str, Any]) -> Headers:
    """The headers minus conveyor's own, for a message that did not come from our ladder."""
    return {k: v for k, v in headers.items() if not k.lower().startswith(CONVEYOR_PREFIX)}


# RabbitMQ's own records of where a message died; a replayed message starts a new life.
_BROKER_DEATH_HEADERS = frozenset(
    (
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    )
)


def replay_headers(headers: Mapping[str, Any]) -> Headers:
    """Headers for an event sent back from a dead-letter queue.

    Attempts, retries and the failure go (the handler gets a fresh set of attempts); the replay
    count goes up, so its status starts over and a late write from before cannot undo it.
    """
    replays = read_int(headers, REPLAYS)
    kept = {
        name: value
        for name, value in without_conveyor_headers(headers).items()
        if name.lower() not in _BROKER_DEATH_HEADERS
    }
    kept[REPLAYS] = replays + 1
    return kept
