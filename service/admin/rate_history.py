"""The dashboard's recent past: a bounded ring of rate samples, so its sparklines start full.

A task (in the app's cleanup_ctx) reads this process's counters every `interval` seconds; each
sample holds the rates over the interval before it. The page loads the ring first, then asks
only for what is newer.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.clock import SYSTEM_CLOCK, Clock
from service.observability.metrics import Metrics

__all__ = ["INTERVAL_SECONDS", "RateHistory", "RateSample"]

INTERVAL_SECONDS = 2.0
SPAN_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class _Counters:
    """This process's running totals at one moment."""

    settled: dict[str, float]  # subscription -> deliveries settled here (not returned)
    handler: dict[str, tuple[float, float]]  # subscription -> handler seconds (sum, count)
    accepted: float
    refused: dict[str, float]  # reason -> events refused


@dataclass(frozen=True, slots=True)
class RateSample:
    """Rates over the `seconds` before `time`."""

    time: float
    seconds: float
    handled_per_second: dict[str, float]  # by subscription
    handler_ms: dict[str, float]  # mean handler time by subscription (0 when none ran)
    accepted_per_second: float
    refused_per_second: dict[str, float]  # by reason; only reasons seen in the interval

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,  # unrounded: `since` compares it as given back
            "seconds": round(self.seconds, 3),
            "subscriptions": {
                name: {
                    "handled_per_second": round(rate, 3),
                    "handler_ms": round(self.handler_ms.get(name, 0.0), 3),
                }
                for name, rate in self.handled_per_second.items()
            },
            "ingest": {
                "accepted_per_second": round(self.accepted_per_second, 3),
                "refused_per_second": {
                    reason: round(rate, 3) for reason, rate in self.refused_per_second.items()
                },
            },
        }


class RateHistory:
    """The last `span` seconds of rate samples, one per `interval`, in memory."""

    def __init__(
        self,
        metrics: Metrics,
        subscriptions: Sequence[str],
        *,
        interval: float = INTERVAL_SECONDS,
        span: float = SPAN_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not 0 < interval <= span:
            msg = f"the interval ({interval}) must be positive and at most the span ({span})"
            raise ValueError(msg)
        self.interval = interval
        self.span = span
        self.clock = clock
        self._metrics = metrics
        self._subscriptions = tuple(subscriptions)
        self._samples: deque[RateSample] = deque(maxlen=math.ceil(span / interval))
        self._last: tuple[float, _Counters] | None = None

    def sample(self) -> RateSample | None:
        """Read the counters now; the rates since the last reading, kept in the ring."""
        now = self.clock.now()
        counters = self._read()
        last, self._last = self._last, (now, counters)
        # The first reading is only a base; a clock set back starts a new one.
        if last is None or now <= last[0]:
            return None
        then, before = last
        seconds = now - then

        def rate(current: float, previous: float) -> float:
            return max(0.0, current - previous) / seconds

        handler_ms = {}
        for name, (total, count) in counters.handler.items():
            previous_total, previous_count = before.handler.get(name, (0.0, 0.0))
            ran = count - previous_count
            handler_ms[name] = 1000 * (total - previous_total) / ran if ran > 0 else 0.0
        refused = {
            reason: rate(count, before.refused.get(reason, 0.0))
            for reason, count in counters.refused.items()
            if count > before.refused.get(reason, 0.0)
        }
        sample = RateSample(
            time=now,
            seconds=seconds,
            handled_per_second={
                name: rate(count, before.settled.get(name, 0.0))
                for name, count in counters.settled.items()
            },
            handler_ms=handler_ms,
            accepted_per_second=rate(counters.accepted, before.accepted),
            refused_per_second=refused,
        )
        self._samples.append(sample)
        return sample

    def since(self, after: float | None = None) -> list[RateSample]:
        """The samples kept, oldest first; only those taken after `after` when given."""
        return [sample for sample in self._samples if after is None or sample.time > after]

    async def run(self) -> None:
        """Sample every `interval` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def _read(self) -> _Counters:
        metrics = self._metrics
        settled = {}
        handler = {}
        for name in self._subscriptions:
            settled[name] = float(
                sum(
                    count
                    for outcome, count in metrics.settled_here(name).items()
                    if outcome != "returned"  # handed back unhandled (shutdown): not throughput
                )
            )
            totals = metrics.handler_totals(name)
            handler[name] = (totals["sum"], totals["count"])
        accepted, refused = metrics.ingest_totals()
        return _Counters(settled, handler, accepted, refused)
