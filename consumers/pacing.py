"""Rate limits: at most `rate` handler starts a second per subscription and process.

A token bucket of `burst` tokens refilled at `rate` a second. Each handler start takes a token,
in-process retries included (each attempt calls the handler, so each counts). A start that finds
no token reserves the next one and waits for it inside its handler slot, so a waiting delivery
counts toward the subscription's `concurrency`, and no more deliveries exist than `prefetch`
lets the broker hand over: waiting holds nothing beyond that bound. The reservations make the
starts first come, first served, and the bucket's debt is at most the deliveries waiting.

The scope is the process: N worker processes start up to N times the rate. The bucket is kept
per subscription by whoever builds the consumers, so a reconnect does not refill it.

Hand-written: the bucket is a few lines of arithmetic over a clock the caller passes in.
aiolimiter, the usual asyncio limiter, is a leaky bucket whose burst is tied to the rate's period
(a capacity of `max_rate` per `time_period`) and reads the event loop's clock itself, which a
unit test cannot move.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Pace", "Pacer", "PacingObserver", "RateLimit", "TokenBucket", "parse_rate"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_BURST = 100_000
MAX_PER_SECOND = 1_000_000.0
# Waits for the token of one more handler start; False: a shutdown came first, do not start.
Pace = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int  # starts allowed at once after a quiet spell
    text: str  # as configured ("50/s"), for logs and the topology


def parse_rate(text: Any, burst: Any = None) -> RateLimit:
    """`"50/s"`, `"300/m"` or `"10/h"`, with an optional burst (default: the rate per second,
    at least 1); ValueError says what is expected."""
    found = _RATE.fullmatch(text) if isinstance(text, str) else None
    count = float(found.group(1)) if found else 0.0
    if found is None or count <= 0:
        raise ValueError("rate as '<count>/s', '/m' or '/h', such as '50/s'")
    per_second = count / _PER[found.group(2)]
    if per_second > MAX_PER_SECOND:
        raise ValueError(f"rate of at most {MAX_PER_SECOND:g} a second")
    if burst is None:
        burst = max(1, int(per_second))
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
        raise ValueError(f"burst as an integer from 1 to {MAX_BURST}")
    return RateLimit(per_second, burst, text.strip())


class TokenBucket:
    """Tokens refilled at `per_second` up to `burst`; times are the caller's clock, in seconds."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)  # full until first used
        self._at: float | None = None

    def reserve(self, now: float) -> float:
        """Take the next token: the seconds to wait until it is there (0: at once)."""
        self._refill(now)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.limit.per_second

    def give_back(self, now: float) -> None:
        """A reservation not used (its wait was interrupted): its token returns."""
        self._refill(now)
        self._tokens = min(self._tokens + 1.0, float(self.limit.burst))

    def _refill(self, now: float) -> None:
        if self._at is None:
            self._at = now
        elif now > self._at:
            grown = self._tokens + (now - self._at) * self.limit.per_second
            self._tokens = min(grown, float(self.limit.burst))
            self._at = now


class PacingObserver(Protocol):
    def rate_wait_began(self, subscription: str) -> None:
        """A handler start waits for a token."""
        ...

    def rate_wait_ended(self, subscription: str, seconds: float) -> None:
        """It got its token (or a shutdown ended the wait) after `seconds`."""
        ...


class Pacer:
    """A subscription's handler starts paced by its bucket; no bucket: no pacing."""

    def __init__(
        self,
        subscription: str,
        bucket: TokenBucket | None,
        *,
        observer: PacingObserver,
        stopping: asyncio.Event,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._name = subscription
        self._bucket = bucket
        self._observer = observer
        self._stopping = stopping
        self._clock = clock

    @property
    def pace(self) -> Pace | None:
        """`start`, or None when there is no limit (no call to make per delivery)."""
        return None if self._bucket is None else self.start

    async def start(self) -> bool:
        """Wait for a token to start a handler; False when a shutdown came first (no token
        taken then)."""
        if self._bucket is None:
            return True
        clock = self._clock or asyncio.get_running_loop().time
        began = clock()
        delay = self._bucket.reserve(began)
        if delay <= 0:
            return True
        self._observer.rate_wait_began(self._name)
        stopped = False
        try:
            stopped = await _wait_unless(self._stopping, delay)
        except asyncio.CancelledError:
            stopped = True
            raise
        finally:
            now = clock()
            if stopped:
                self._bucket.give_back(now)
            self._observer.rate_wait_ended(self._name, max(0.0, now - began))
        return not stopped


async def _wait_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; True (at once) if `stop` is set meanwhile."""
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
