"""The ingress's byte budget: requests that would take more than CONVEYOR_MAX_INGEST_BYTES wait a
moment, then are refused with 503 overloaded, nothing of them published; the bytes held never
pass the budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from consumers import Event
from service.http.admission import BODY_COPIES, request_bytes_bound
from tests.conftest import Running, StartConveyor, subscription
from tests.integration.test_metrics import scrape, value
from tests.support.waiting import eventually

BATCH = "application/cloudevents-batch+json"
MAX_BODY = 64 * 1024
MAX_EVENTS = 10


def _batch(prefix: str) -> bytes:
    events = [
        {"specversion": "1.0", "id": f"{prefix}-{n}", "source": "/t", "type": "bytes.ok"}
        | {"data": {"filler": "x" * 5000}}
        for n in range(MAX_EVENTS)
    ]
    return orjson.dumps(events)


async def _held_bytes(conveyor: Running) -> float:
    return value(await scrape(conveyor), "conveyor_ingest_bytes_in_flight")


async def test_requests_past_the_byte_budget_are_refused_and_the_budget_is_never_passed(
    start_conveyor: StartConveyor,
) -> None:
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.id)

    # Room for one request of the largest size and a little more, not for two bodies.
    budget = request_bytes_bound(MAX_BODY, MAX_EVENTS) + MAX_BODY
    conveyor = await start_conveyor(
        (subscription("bytes", ("bytes.ok",), handle),),
        max_body_bytes=MAX_BODY,
        max_batch_events=MAX_EVENTS,
        max_ingest_bytes=budget,
    )
    held_body = _batch("held")
    release = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield held_body[:100]
        await release.wait()
        yield held_body[100:]

    # A request whose body is on its way holds its reservation (made from Content-Length).
    held = asyncio.create_task(
        conveyor.client.post(
            "/v1/events",
            data=slowly(),
            headers={"Content-Type": BATCH, "Content-Length": str(len(held_body))},
        )
    )

    async def reserved() -> bool:
        return await _held_bytes(conveyor) >= len(held_body) * BODY_COPIES

    await eventually(reserved, what="the held request's reservation")

    refused_whole = await conveyor.client.post(
        "/v1/events", data=_batch("whole"), headers={"Content-Type": BATCH}
    )

    async def chunks() -> AsyncIterator[bytes]:
        body = _batch("chunked")
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    refused_chunked = await conveyor.client.post(
        "/v1/events", data=chunks(), headers={"Content-Type": BATCH}
    )
    for refused in (refused_whole, refused_chunked):
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        problem: dict[str, Any] = await refused.json(content_type=None)
        assert problem["type"] == "urn:conveyor:problem:overloaded"
        assert "CONVEYOR_MAX_INGEST_BYTES" in problem["detail"]

    release.set()
    accepted = await held
    assert accepted.status == 202
    # With the budget free again, a request of the same size goes through.
    again = await conveyor.client.post(
        "/v1/events", data=_batch("again"), headers={"Content-Type": BATCH}
    )
    assert again.status == 202

    async def all_handled() -> bool:
        return len(handled) == 2 * MAX_EVENTS

    await eventually(all_handled, what="the accepted batches handled")
    # Nothing of the refused requests was published: only the two accepted batches arrived.
    assert {event_id.split("-")[0] for event_id in handled} == {"held", "again"}
    samples = await scrape(conveyor)
    assert value(samples, "conveyor_ingest_bytes_in_flight") == 0
    peak = value(samples, "conveyor_ingest_bytes_peak")
    assert len(held_body) * BODY_COPIES < peak <= budget
    for prefix in ("whole", "chunked"):
        status, _ = await conveyor.status(f"/v1/events/{prefix}-0")
        assert status == 404
