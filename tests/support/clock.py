"""A clock tests move forward instead of waiting for expiry, leases and TTLs to run out."""

from __future__ import annotations

import time


class ShiftedClock:
    """The system's wall clock plus an offset the test advances.

    Shifted, not frozen: consumers stamp their status reports with the system time, so the
    service's clock has to keep running alongside it; `advance` then jumps both past a TTL.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
