"""In and out rates from two polls of a queue and this process's delivery counters."""

from __future__ import annotations

from service.observability.metrics import Metrics, QueueRates


def test_rates_come_from_settled_deliveries_and_the_growth_of_the_queue() -> None:
    metrics = Metrics()
    for _ in range(4):
        metrics.delivery_settled("orders", "acked")
    metrics.note_queue_sample("orders", 100.0, 5)
    assert "orders" not in metrics.rates  # one sample gives no rate yet

    for outcome in ["acked"] * 8 + ["dead-lettered", "retry-scheduled", "returned"]:
        metrics.delivery_settled("orders", outcome)
    metrics.note_queue_sample("orders", 102.0, 9)

    # 10 settled in 2 s (a returned delivery is not handled), and 4 more waiting than before.
    assert metrics.rates["orders"] == QueueRates(
        in_per_second=7.0, out_per_second=5.0, over_seconds=2.0
    )


def test_a_draining_queue_never_shows_a_negative_inflow() -> None:
    metrics = Metrics()
    metrics.note_queue_sample("orders", 0.0, 100)
    metrics.note_queue_sample("orders", 1.0, 0)  # drained by other processes

    assert metrics.rates["orders"].in_per_second == 0.0
    assert metrics.rates["orders"].out_per_second == 0.0
