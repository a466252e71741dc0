"""Telling a delivery that provably is its event's first copy, which needs no dedup lookup.

Only the ingress's mark (producers.first_copy) can say "first": it marks a publish whose claim
had no earlier attempt. Anything on the delivery that says it may be a copy keeps the lookup:
RabbitMQ redelivered it (`redelivered`, or a quorum queue's `x-delivery-count`), it died
somewhere before (`x-death`), or conveyor's own headers say it came back from the retry ladder,
the dead-letter queue or an archive (any other `x-conveyor-*` header: attempts, retries,
`x-conveyor-replays`, `x-conveyor-replay`). Whether the mark is this event's own is the
ledger's to check (`consumers.status.StatusLedger.vouches_first_copy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumers.dead_letter import CONVEYOR_PREFIX
from producers.first_copy import FIRST_COPY_HEADER

__all__ = ["REPLAY_HEADER", "first_copy_mark"]

# What an archive replay will carry; named here so that it is never read as a first copy.
REPLAY_HEADER = "x-conveyor-replay"
_REDELIVERY_HEADERS = ("x-death", "x-delivery-count")


def first_copy_mark(headers: Mapping[str, Any], *, redelivered: bool) -> object | None:
    """The delivery's first-copy mark, or None when it has none or may be a copy anyway.

    `headers` are the delivery's as they arrived (conveyor's own not yet stripped).
    """
    mark: object = headers.get(FIRST_COPY_HEADER)
    if mark is None or redelivered:
        return None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _REDELIVERY_HEADERS and value not in (0, None):
            return None
        if lowered.startswith(CONVEYOR_PREFIX) and lowered != FIRST_COPY_HEADER:
            return None  # attempts, retries, replays, failures: it lived before
    return mark
