"""When an event is due: its `deliverat` attribute, or the request's `Conveyor-Delay` header.

Pure functions, no I/O. A `deliverat` in the past, or none, means now; one past
CONVEYOR_MAX_DELAY, or that is not an RFC 3339 timestamp, is refused as `400 invalid-event`
naming the attribute. The chain counts whole seconds (producers.delay), so a delay is rounded
to the nearest second, and one under half a second is no delay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from producers import InvalidEventError, OutgoingEvent
from producers.event import format_time
from producers.formats import parse_time
from service.settings_reader import parse_duration

__all__ = [
    "DELAY_HEADER",
    "DELAY_PATTERN",
    "DELIVERAT",
    "Due",
    "check_deliverat",
    "due_of",
    "requested_delay",
]

DELIVERAT = "deliverat"
DELAY_HEADER = "Conveyor-Delay"
# A duration of at most 365 days in seconds (the unit may be left out), milliseconds, minutes,
# hours or days, ASCII digits: the pattern the OpenAPI document gives, so a value it allows is
# taken (up to CONVEYOR_MAX_DELAY) and one it refuses never is.
DELAY_PATTERN = (
    r"^(?:[0-2]?[0-9]{1,7}(?:\.[0-9]{1,3})?s?"
    r"|[0-9]{1,10}(?:\.[0-9]{1,3})?ms"
    r"|[0-4]?[0-9]{1,5}(?:\.[0-9]{1,3})?m"
    r"|(?:[0-7]?[0-9]{1,3}|8[0-6][0-9]{2}|87[0-5][0-9])(?:\.[0-9]{1,3})?h"
    r"|(?:[0-2]?[0-9]{1,2}|3[0-5][0-9]|36[0-4])(?:\.[0-9]{1,3})?d|365d)$"
)
_DELAY = re.compile(DELAY_PATTERN)
# Under this the event goes out at once: the chain's shortest wait is one second.
_SHORTEST_DELAY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Due:
    """A delayed event: when it is due (Unix seconds) and its wait in whole seconds."""

    at: float
    seconds: int


def _off() -> InvalidEventError:
    return InvalidEventError(
        "delayed delivery is off here (CONVEYOR_MAX_DELAY is 0): send the event without "
        "deliverat or Conveyor-Delay",
        DELIVERAT,
    )


def requested_delay(header: str | None, max_delay: float) -> float | None:
    """Seconds the request's Conveyor-Delay header asks for (None: no header)."""
    if header is None:
        return None
    if _DELAY.fullmatch(header) is None:
        raise InvalidEventError(
            f"{DELAY_HEADER} must be a duration of at most 365 days such as 90s, 15m, 2h or 7d "
            "(a bare number is seconds)",
            DELIVERAT,
        )
    seconds = parse_duration(header)
    if seconds > 0 and max_delay <= 0:
        raise _off()
    if seconds > max_delay:
        raise InvalidEventError(
            f"{DELAY_HEADER} is longer than the longest delay, {max_delay:g} s "
            "(CONVEYOR_MAX_DELAY)",
            DELIVERAT,
        )
    return seconds


def check_deliverat(event: OutgoingEvent, now: float, max_delay: float) -> None:
    """Raise InvalidEventError when the event's `deliverat` is unreadable or too far ahead."""
    text = event.attributes.get(DELIVERAT)
    if text is None:
        return
    due = _parse(text)
    if due - now <= _SHORTEST_DELAY_SECONDS:
        return
    if max_delay <= 0:
        raise _off()
    if due - now > max_delay:
        raise InvalidEventError(
            f"deliverat is more than the longest delay, {max_delay:g} s, ahead "
            "(CONVEYOR_MAX_DELAY)",
            DELIVERAT,
        )


def due_of(
    event: OutgoingEvent, now: float, delay: float | None
) -> tuple[OutgoingEvent, Due | None]:
    """The event as it is published (with `deliverat` set from `delay`, the request's
    Conveyor-Delay, which wins over the attribute), and when it is due (None: now)."""
    if delay is not None:
        at = now + delay
        attributes = {**event.attributes, DELIVERAT: format_time(datetime.fromtimestamp(at, UTC))}
        event = OutgoingEvent(attributes, event.datacontenttype, event.data)
    elif (text := event.attributes.get(DELIVERAT)) is not None:
        at = _parse(text)
    else:
        return event, None
    if at - now < _SHORTEST_DELAY_SECONDS:
        return event, None
    return event, Due(at, round(at - now))


def _parse(text: str) -> float:
    try:
        return parse_time(text).timestamp()
    except InvalidEventError:
        raise InvalidEventError(
            "deliverat must be an RFC 3339 timestamp with an offset, such as 2026-01-31T09:30:00Z",
            DELIVERAT,
        ) from None
