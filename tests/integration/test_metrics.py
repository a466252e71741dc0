"""GET /metrics: the counts follow what was sent and what happened to it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from consumers import Event, PermanentError
from consumers.retry import RetryPolicy
from tests.conftest import Running, StartConveyor, subscription
from tests.support.recorder import Recorder
from tests.support.waiting import eventually


async def scrape(conveyor: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await conveyor.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_was_sent_and_what_became_of_it(
    start_conveyor: StartConveyor,
) -> None:
    async def handle(event: Event) -> None:
        if event.type == "m.refused":
            raise PermanentError("refused")
        if event.type == "m.flaky" and event.attempt == 1:
            raise RuntimeError("first attempt fails")

    retry = RetryPolicy(in_process=1, delays=(0.2,))
    conveyor = await start_conveyor((subscription("m", ("m.*",), handle, retry=retry),))
    for index, event_type in enumerate(["m.ok", "m.ok", "m.ok", "m.refused", "m.flaky"]):
        response = await conveyor.post({"type": event_type, "id": f"e-{index}", "source": "/m"})
        assert response.status == 202
    bad = await conveyor.client.post(
        "/v1/events", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status == 400
    for index in range(5):
        await conveyor.status(f"/v1/events/e-{index}", wait="10s")

    async def settled() -> bool:
        samples = await scrape(conveyor)
        return value(samples, "conveyor_deliveries_total", subscription="m", outcome="acked") == 4

    await eventually(settled, what="four acked deliveries")

    async def polled() -> bool:
        samples = await scrape(conveyor)
        return value(samples, "conveyor_queue_messages", subscription="m", queue="dlq") == 1

    await eventually(polled, what="the DLQ depth to be polled")
    samples = await scrape(conveyor)

    assert value(samples, "conveyor_events_accepted_total") == 5
    assert value(samples, "conveyor_events_rejected_total", reason="malformed-json") == 1
    delivered = {
        outcome: value(samples, "conveyor_deliveries_total", subscription="m", outcome=outcome)
        for outcome in ("acked", "retry-scheduled", "dead-lettered", "returned")
    }
    assert delivered == {"acked": 4, "retry-scheduled": 1, "dead-lettered": 1, "returned": 0}
    assert value(samples, "conveyor_retries_total", subscription="m", tier="200ms") == 1
    assert value(samples, "conveyor_handler_seconds_count", subscription="m") == 6
    assert value(samples, "conveyor_publish_confirm_seconds_count", outcome="ack") == 5
    assert value(samples, "conveyor_publishes_in_flight") == 0
    posts = {"route": "/v1/events", "method": "POST"}
    assert value(samples, "conveyor_http_requests_total", **posts, status="202") == 5
    assert value(samples, "conveyor_http_requests_total", **posts, status="400") == 1
    assert value(samples, "conveyor_queue_messages", subscription="m", queue="main") == 0
    assert value(samples, "conveyor_queue_consumers", subscription="m") == 1
    assert value(samples, "conveyor_broker_connected") == 1


async def test_the_idempotency_rows_kept_are_counted_at_each_purge(
    start_conveyor: StartConveyor,
) -> None:
    await assert_kept_keys_counted(start_conveyor)


async def test_the_idempotency_rows_kept_in_postgresql_are_counted_too(
    start_conveyor: StartConveyor, postgres_url: str
) -> None:
    await assert_kept_keys_counted(start_conveyor, store_url=postgres_url)


async def assert_kept_keys_counted(start_conveyor: StartConveyor, **store: str) -> None:
    conveyor = await start_conveyor(
        (subscription("kept", ("k.*",), Recorder()),), purge_interval=0.2, **store
    )
    sent = [("key-1", "k-1"), ("key-2", "k-2"), ("key-3", "k-3"), ("key-1", "k-1"), (None, "k-4")]
    for key, event_id in sent:
        response = await conveyor.client.post(
            "/v1/events",
            json={"type": "k.x", "id": event_id, "source": "/k"},
            headers={"Idempotency-Key": key} if key else {},
        )
        assert response.status == 202

    async def counted() -> bool:
        samples = await scrape(conveyor)
        kept = {
            scope: value(samples, "conveyor_idempotency_keys", scope=scope)
            for scope in ("request", "event")
        }
        # Three keys (the fourth request repeated the first) and four events.
        return kept == {"request": 3, "event": 4}

    await eventually(counted, what="the kept keys to be counted")


async def test_metrics_include_the_process_and_the_interpreter(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor()
    samples = await scrape(conveyor)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    platform = [labels for name, labels in samples if name == "python_info"]
    assert len(platform) == 1
    assert ("implementation", "CPython") in platform[0]
    assert any(name == "python_gc_objects_collected_total" for name, _ in samples)
