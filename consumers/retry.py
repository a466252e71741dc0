"""The retry policy of a subscription: a few quick tries in process, then a broker-side ladder.

In-process attempts absorb blips of a few hundred milliseconds. Longer waits happen in TTL
queues on the broker (`{ns}.{subscription}.retry.<delay>`), one per tier, that dead-letter back
to the subscription queue: nothing is held unacked in memory, so a delay of hours is fine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryPolicy", "delay_label"]

# In-process backoff: exponential with full jitter, 100 ms base, at most 2 s between tries; with
# at most 10 attempts the waits of one delivery stay under 20 s.
IN_PROCESS_BASE_SECONDS = 0.1
IN_PROCESS_MAX_WAIT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    in_process: int = 3  # handler attempts inside one delivery (1 = no in-process retry)
    delays: tuple[float, ...] = (1.0, 10.0, 60.0, 600.0)  # broker-side tiers, seconds

    @property
    def max_attempts(self) -> int:
        """Handler attempts before an always-failing event is dead-lettered."""
        return self.in_process * (len(self.delays) + 1)

    def next_delay(self, ladder_passes: int) -> float | None:
        """The tier for an event that already went round the ladder `ladder_passes` times."""
        if ladder_passes < len(self.delays):
            return self.delays[ladder_passes]
        return None


def delay_label(seconds: float) -> str:
    """A short stable name for a tier: 1s, 10s, 1m, 10m, 2h, or milliseconds when not whole."""
    milliseconds = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"
