"""The dashboard's ring of recent rates: what a sample holds, how long the ring is, its clock."""

from __future__ import annotations

import pytest

from service.admin.rate_history import RateHistory
from service.observability.metrics import Metrics


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def test_a_sample_holds_the_rates_since_the_last_one_from_the_processs_counters() -> None:
    metrics = Metrics()
    clock = Clock()
    history = RateHistory(metrics, ["orders", "mail"], interval=2.0, clock=clock)
    metrics.delivery_settled("orders", "acked")
    metrics.events_accepted.inc(5)
    assert history.sample() is None  # the first reading is only the base

    for outcome in ["acked"] * 6 + ["dead-lettered", "returned"]:
        metrics.delivery_settled("orders", outcome)
    metrics.handler_ran("orders", 0.25)
    metrics.handler_ran("orders", 0.75)
    metrics.events_accepted.inc(8)
    metrics.event_rejected("invalid-event")
    metrics.event_rejected("invalid-event")
    metrics.event_rejected("malformed-json")
    clock.at += 2.0
    history.sample()

    # 7 settled in 2 s (a returned delivery was not handled), two handler runs of 500 ms on
    # average, 8 accepted and 3 refused in 2 s.
    assert [sample.to_json() for sample in history.since()] == [
        {
            "time": 1002.0,
            "seconds": 2.0,
            "subscriptions": {
                "orders": {"handled_per_second": 3.5, "handler_ms": 500.0},
                "mail": {"handled_per_second": 0.0, "handler_ms": 0.0},
            },
            "ingest": {
                "accepted_per_second": 4.0,
                "refused_per_second": {"invalid-event": 1.0, "malformed-json": 0.5},
            },
        }
    ]

    clock.at += 2.0
    history.sample()
    quiet = history.since(1002.0)
    assert len(quiet) == 1
    assert quiet[0].to_json()["ingest"] == {"accepted_per_second": 0.0, "refused_per_second": {}}


def test_the_ring_keeps_only_the_span_and_since_gives_the_newer_samples() -> None:
    clock = Clock(0.0)
    history = RateHistory(Metrics(), ["orders"], interval=5.0, span=60.0, clock=clock)
    for _ in range(30):
        history.sample()
        clock.at += 5.0

    kept = history.since()
    assert len(kept) == 12  # 60 s at 5 s
    # Read at 0, 5, ..., 145: the first reading is the base, the newest twelve samples stay.
    assert [sample.time for sample in kept] == [float(t) for t in range(90, 150, 5)]
    assert [sample.time for sample in history.since(135.0)] == [140.0, 145.0]


def test_a_clock_set_back_starts_a_new_base_instead_of_a_negative_interval() -> None:
    metrics = Metrics()
    clock = Clock(100.0)
    history = RateHistory(metrics, ["orders"], interval=1.0, clock=clock)
    history.sample()
    clock.at = 50.0
    metrics.delivery_settled("orders", "acked")

    assert history.sample() is None
    clock.at = 51.0
    sample = history.sample()

    assert sample is not None
    assert sample.handled_per_second == {"orders": 0.0}  # the acked one fell in the new base
    assert [s.time for s in history.since()] == [51.0]


def test_an_interval_longer_than_the_span_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        RateHistory(Metrics(), [], interval=10.0, span=5.0)
