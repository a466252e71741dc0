"""Data that says it is JSON and is not: refused at the door in every mode; and an event a
consumer dead-letters as malformed gets a final status when its source and id can be read."""

from __future__ import annotations

import base64
from typing import Any

import aio_pika
import orjson
import pytest

from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

PROBLEM = "application/problem+json"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
DEEP = b"[" * 2000 + b"]" * 2000
BINARY = {"ce-specversion": "1.0", "ce-source": "/shop", "ce-type": "order.placed"}


def _structured(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": "/shop", "type": "order.placed"} | (
        fields
    )


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _only_the_sentinel_was_published(conveyor: Running, namespace: Namespace) -> None:
    """A good event sent after the refused ones is the first and only one in the queue."""
    sentinel = await conveyor.client.post(
        "/v1/events",
        data=b'{"total": 1}',
        headers=BINARY | {"ce-id": "sentinel", "Content-Type": "application/json"},
    )
    assert sentinel.status == 202
    queued = await namespace.take_at_least(namespace.topology.queue("orders"), 1)
    assert [message.message_id for message in queued] == ["sentinel"]


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"total": 12.5', "unexpected end of data"),
        (b"\xff\xfe", "not valid utf-8"),
        (DEEP, "depth limit exceeded"),
    ],
)
async def test_a_binary_event_whose_json_body_does_not_parse_is_400_malformed_json(
    start_conveyor: StartConveyor, namespace: Namespace, body: bytes, what: str
) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), role=Role.INGRESS
    )
    response = await conveyor.client.post(
        "/v1/events",
        data=body,
        headers=BINARY | {"ce-id": "bad-1", "Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status == 400, await response.text()
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == "urn:conveyor:problem:malformed-json"
    assert problem["detail"].startswith("the body (the event's data) is not valid JSON")
    assert "application/json; charset=utf-8" in problem["detail"]
    assert what in problem["detail"].lower()
    await _only_the_sentinel_was_published(conveyor, namespace)


@pytest.mark.parametrize("content_type", [STRUCTURED, "application/json"])
async def test_data_base64_that_says_json_and_is_not_is_400_malformed_json(
    start_conveyor: StartConveyor, namespace: Namespace, content_type: str
) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), role=Role.INGRESS
    )
    document = _structured(
        "bad-2", datacontenttype="application/json", data_base64=_base64(b'{"total": 12.5')
    )

    response = await conveyor.post(document, content_type)

    assert response.status == 400, await response.text()
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == "urn:conveyor:problem:malformed-json"
    assert problem["detail"].startswith("the data in data_base64 is not valid JSON")
    await _only_the_sentinel_was_published(conveyor, namespace)


async def test_a_batch_entry_whose_data_base64_is_not_json_fails_alone(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), role=Role.INGRESS
    )
    batch = [
        _structured("fine", data={"total": 1}),
        _structured("bad-3", datacontenttype="application/json", data_base64=_base64(b"\xff")),
        # Not JSON, and not said to be: carried as it is.
        _structured("bytes", datacontenttype="image/png", data_base64=_base64(b"\xff")),
    ]

    response = await conveyor.post(batch, BATCH)

    assert response.status == 207, await response.text()
    fine, bad, raw = (await response.json())["results"]
    assert (fine["id"], raw["id"]) == ("fine", "bytes")
    assert bad["error"]["type"] == "urn:conveyor:problem:malformed-json"
    assert bad["error"]["detail"].startswith("the data in data_base64 is not valid JSON")
    queued = await namespace.take_at_least(namespace.topology.queue("orders"), 2)
    assert sorted(message.message_id or "" for message in queued) == ["bytes", "fine"]


async def test_an_amqp_event_dead_lettered_as_malformed_gets_a_final_status(
    start_conveyor: StartConveyor, namespace: Namespace, store_url: str
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), recorder, completions=True),), store_url=store_url
    )
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        results = await channel.declare_queue(exclusive=True)
        await results.bind(namespace.topology.results_exchange, routing_key="conveyor.event.#")
        # Published straight over AMQP by another service: binary, then structured mode.
        await namespace.publish_raw(
            b'{"total": 12.5',
            routing_key="order.placed",
            content_type="application/json",
            headers={"ce-specversion": "1.0", "ce-id": "m-1", "ce-source": "/shop"}
            | {"ce-type": "order.placed"},
            message_id="m-1",
        )
        structured = _structured(
            "m-2", datacontenttype="application/json", data_base64=_base64(b"not json")
        )
        await namespace.publish_raw(
            orjson.dumps(structured),
            routing_key="order.placed",
            content_type=STRUCTURED,
            message_id="m-2",
        )

        for event_id in ("m-1", "m-2"):
            status, found = await conveyor.status(f"/v1/events/{event_id}", wait="10s")
            assert status == 200, found
            assert (found["state"], found["done"]) == ("dead-lettered", True)
            entry = found["subscriptions"]["orders"]
            assert (entry["state"], entry["attempts"]) == ("dead-lettered", 0)
            assert entry["last_error"]["reason"] == "malformed"
            assert entry["last_error"]["class"] == "MalformedEventError"
            assert "not valid JSON" in entry["last_error"]["message"]
        dead = await namespace.take_at_least(namespace.topology.dead_letter_queue("orders"), 2)
        assert sorted(message.message_id or "" for message in dead) == ["m-1", "m-2"]
        assert recorder.events == []

        # Announced like any other dead letter.
        announced: list[dict[str, Any]] = []

        async def both_announced() -> bool:
            while (message := await results.get(no_ack=True, fail=False)) is not None:
                announced.append(orjson.loads(message.body))
            return len(announced) >= 2

        await eventually(both_announced, what="two dead-lettered completion events")
    assert sorted((a["event"]["id"], a["reason"], a["attempts"]) for a in announced) == [
        ("m-1", "malformed", 0),
        ("m-2", "malformed", 0),
    ]
