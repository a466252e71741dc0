"""The archive stream: what it keeps, browsing it by time and attributes, retention, and off."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ARCHIVE = {"archive": 3600.0, "archive_read_idle": 1.0, "admin_tokens": (("ops", TOKEN),)}


async def call(conveyor: Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await conveyor.client.request(method, path, headers=ADMIN, **kwargs)
    return response.status, await response.json(content_type=None)


async def listed(conveyor: Running, **query: Any) -> list[dict[str, Any]]:
    status, answer = await call(conveyor, "GET", "/v1/admin/archive", params=query)
    assert status == 200, answer
    events: list[dict[str, Any]] = answer["events"]
    return events


async def next_second() -> float:
    """Sleep into the next whole second of the wall clock; that second."""
    now = time.time()
    await asyncio.sleep(math.ceil(now) - now + 0.02)
    return float(math.ceil(now))


async def test_events_over_http_and_over_amqp_are_archived_with_their_attributes(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    since = time.time() - 1
    conveyor = await start_conveyor((subscription("orders", ("order.*",), Recorder()),), **ARCHIVE)
    structured = {
        "specversion": "1.0",
        "type": "order.placed",
        "id": "o-1",
        "source": "/shop",
        "subject": "cart-7",
        "region": "eu",
        "data": {"total": 12},
    }
    response = await conveyor.post(structured, "application/cloudevents+json")
    assert response.status == 202
    # No subscription takes this type: it is archived all the same.
    assert await conveyor.post_status({"type": "nobody.cares", "id": "n-1", "source": "/x"}) == 202
    await namespace.publish_raw(
        b'{"from":"amqp"}',
        routing_key="order.shipped",
        message_id="a-1",
        content_type="application/json",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "a-1",
            "ce-type": "order.shipped",
            "ce-source": "/warehouse",
            "ce-subject": "parcel-3",
        },
    )

    rows = await listed(conveyor, since=since)

    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {"o-1", "n-1", "a-1"}
    assert by_id["o-1"] | {"offset": 0, "time": ""} == {
        "offset": 0,
        "id": "o-1",
        "type": "order.placed",
        "source": "/shop",
        "subject": "cart-7",
        "time": "",
        "size": len(b'{"total":12}'),
    }
    assert by_id["a-1"]["source"] == "/warehouse"
    assert by_id["a-1"]["subject"] == "parcel-3"
    assert by_id["n-1"]["type"] == "nobody.cares"
    assert by_id["o-1"]["time"] is not None
    status, shown = await call(
        conveyor, "GET", "/v1/admin/archive/events/o-1", params={"since": since}
    )
    assert status == 200, shown
    assert shown["headers"]["ce-region"] == "eu"
    assert shown["headers"]["ce-subject"] == "cart-7"
    assert shown["data"] == '{"total":12}'
    assert shown["content_type"] == "application/json"
    filtered = await listed(conveyor, since=since, type="order.*", source="/warehouse")
    assert [row["id"] for row in filtered] == ["a-1"]
    by_subject = await listed(conveyor, since=since, subject="cart-7")
    assert [row["id"] for row in by_subject] == ["o-1"]


async def test_a_time_window_lists_exactly_the_events_inside_it(
    start_conveyor: StartConveyor,
) -> None:
    since = time.time() - 1
    conveyor = await start_conveyor(**ARCHIVE)
    ids: dict[str, list[str]] = {"before": [], "inside": [], "after": []}
    for phase in ("before", "inside", "after"):
        await next_second()
        for index in range(3):
            event_id = f"{phase}-{index}"
            ids[phase].append(event_id)
            assert (
                await conveyor.post_status({"type": "t.x", "id": event_id, "source": "/w"}) == 202
            )
    everything = await listed(conveyor, since=since)
    times = {row["id"]: row["time"] for row in everything}
    assert set(times) == {event_id for phase in ids.values() for event_id in phase}
    seconds = {row["id"]: _seconds(row["time"]) for row in everything}
    start, end = seconds["inside-0"], seconds["after-2"]
    expected = sorted(event_id for event_id, at in seconds.items() if start <= at < end)

    window = await listed(conveyor, since=start, until=end)

    assert sorted(row["id"] for row in window) == expected
    assert "inside-0" in expected
    assert not set(ids["before"]) & set(expected)
    assert "after-2" not in expected
    limited = await listed(conveyor, since=since, limit=2)
    assert len(limited) == 2


async def test_retention_removes_old_segments(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor(
        archive=2.0,
        archive_segment_bytes=1000,
        archive_read_idle=1.0,
        admin_tokens=(("ops", TOKEN),),
    )
    old = [f"old-{index}" for index in range(8)]
    for event_id in old:
        assert (
            await conveyor.post_status(
                {"type": "t.x", "id": event_id, "source": "/r", "data": "x" * 200}
            )
            == 202
        )
    assert {row["id"] for row in await listed(conveyor, since=0)} >= set(old)
    await asyncio.sleep(3)  # the old events pass the 2 s retention; new segments start now
    new = [f"new-{index}" for index in range(8)]
    for event_id in new:
        assert (
            await conveyor.post_status(
                {"type": "t.x", "id": event_id, "source": "/r", "data": "y" * 200}
            )
            == 202
        )

    async def only_new_left() -> bool:
        kept = {row["id"] for row in await listed(conveyor, since=0)}
        return not kept & set(old) and set(new[-2:]) <= kept

    await eventually(only_new_left, timeout=20, what="the old segments to go")
    status, span = await call(conveyor, "GET", "/v1/admin/archive/span")
    assert status == 200
    assert span["oldest"]["id"].startswith("new-")
    assert span["newest"]["id"] == new[-1]
    metrics = await (await conveyor.client.get("/metrics")).text()
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("conveyor_archive_")
    }
    assert 8 <= gauges["conveyor_archive_events"] <= 32  # offsets, which may skip a few
    assert gauges["conveyor_archive_oldest_age_seconds"] >= 0


async def test_the_archive_off_declares_no_stream(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), admin_tokens=(("ops", TOKEN),)
    )
    assert await conveyor.post_status({"type": "order.x", "id": "1", "source": "/s"}) == 202

    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(namespace.topology.archive, passive=True)
    # Nor its routes: the admin API answers 404, and its document does not list them.
    status, _ = await call(conveyor, "GET", "/v1/admin/archive", params={"since": 0})
    assert status == 404
    document = await (await conveyor.client.get("/openapi.json")).json()
    assert not [path for path in document["paths"] if path.startswith("/v1/admin/archive")]


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()
