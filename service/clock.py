"""Where the store, statuses and idempotency read the time: one source, passed down from the app.

Expiry, leases and `accepted_at` are wall-clock seconds since the epoch, compared across
processes through the store. Tests pass a clock they can move instead of waiting for it.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock"]


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
