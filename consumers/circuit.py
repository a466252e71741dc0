"""A circuit breaker for one webhook endpoint: a sick endpoint gets probes, not every event.

Closed, every request goes out. After `failures` consecutive failures it opens: requests are
refused (the event goes to the retry ladder without a request) until `cooldown` seconds have
passed; then one request at a time probes the endpoint (half-open). A probe's success closes the
circuit, its failure opens it for another cool-down. Written here rather than taken from a
library because the breakers on PyPI (pybreaker, aiobreaker, circuitbreaker) wrap the call and
raise their own error, where the webhook must decide per response what counts as a failure and
refuse a request without calling anything; the state machine is these few lines.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class CircuitView:
    """What the admin API and the metrics show of one circuit."""

    state: CircuitState
    consecutive_failures: int
    opened_for_seconds: float | None  # since it last opened; None while closed


class CircuitBreaker:
    """One endpoint's breaker; `clock` is monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.cooldown:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def view(self) -> CircuitView:
        opened = None if self._opened_at is None else self._clock() - self._opened_at
        return CircuitView(self.state, self._consecutive, opened)

    def allow(self) -> float | None:
        """None when a request may go out now; else the seconds until the next probe.

        In half-open, only one request (the probe) goes out until it has an outcome.
        """
        if self._opened_at is None:
            return None
        waited = self._clock() - self._opened_at
        if waited < self.cooldown:
            return self.cooldown - waited
        if self._probing:
            return self.cooldown
        self._probing = True
        return None

    def succeeded(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self._clock()
        self._probing = False

    def abandoned(self) -> None:
        """A request that ended with no answer about the endpoint (cancelled at shutdown)."""
        self._probing = False
