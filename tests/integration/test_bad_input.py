"""Bad input gets a clear problem+json answer and publishes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

PROBLEM = "application/problem+json"


@pytest.fixture
async def conveyor(start_conveyor: StartConveyor) -> Running:
    # Bind everything so that a wrongly accepted event would show up in the catch-all queue.
    return await start_conveyor(
        (subscription("all", ("#",), Recorder()),), max_body_bytes=4096, max_batch_events=3
    )


async def assert_nothing_published(namespace: Namespace) -> None:
    assert await namespace.depth(namespace.topology.queue("all")) == 0
    assert await namespace.depth(namespace.topology.unrouted) == 0


async def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == status
    assert body["type"].startswith("urn:conveyor:problem:")
    assert body["detail"]
    return body


async def test_malformed_json_is_400(conveyor: Running, namespace: Namespace) -> None:
    response = await conveyor.client.post(
        "/v1/events", data=b'{"type": ', headers={"Content-Type": "application/json"}
    )
    body = await problem(response, 400)
    assert body["type"] == "urn:conveyor:problem:malformed-json"
    await assert_nothing_published(namespace)


@pytest.mark.parametrize(
    ("document", "attribute"),
    [
        ({"specversion": "1.0", "source": "/s", "type": "t"}, "id"),
        ({"specversion": "1.0", "id": "1", "type": "t"}, "source"),
        ({"specversion": "1.0", "id": "1", "source": "/s"}, "type"),
        ({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}, "specversion"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "noon"}, "time"),
        (
            {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "Bad-Name": "x"},
            "Bad-Name",
        ),
        ({"specversion": "1.0", "id": "", "source": "/s", "type": "t"}, "id"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ext": {"a": 1}}, "ext"),
    ],
)
async def test_a_missing_or_invalid_attribute_is_400_naming_it(
    conveyor: Running, namespace: Namespace, document: dict[str, Any], attribute: str
) -> None:
    response = await conveyor.post(document, "application/cloudevents+json")
    body = await problem(response, 400)
    assert body["attribute"] == attribute
    await assert_nothing_published(namespace)


async def test_binary_mode_without_required_headers_is_400(
    conveyor: Running, namespace: Namespace
) -> None:
    response = await conveyor.client.post(
        "/v1/events", data=b"x", headers={"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s"}
    )
    assert (await problem(response, 400))["attribute"] == "type"
    await assert_nothing_published(namespace)


async def test_plain_json_without_type_is_400(conveyor: Running, namespace: Namespace) -> None:
    body = await problem(await conveyor.post({"data": 1}), 400)
    assert body["attribute"] == "type"
    await assert_nothing_published(namespace)


async def test_an_unsupported_content_type_is_415(conveyor: Running, namespace: Namespace) -> None:
    response = await conveyor.client.post(
        "/v1/events", data=b"<x/>", headers={"Content-Type": "application/xml"}
    )
    body = await problem(response, 415)
    assert "application/cloudevents+json" in body["detail"]
    await assert_nothing_published(namespace)


async def test_a_body_over_the_limit_is_413_naming_the_setting(
    conveyor: Running, namespace: Namespace
) -> None:
    document = {"type": "big.one", "data": "x" * 5000}
    body = await problem(await conveyor.post(document), 413)
    assert "CONVEYOR_MAX_BODY_BYTES" in body["detail"]
    await assert_nothing_published(namespace)


async def test_a_chunked_body_over_the_limit_is_413(
    conveyor: Running, namespace: Namespace
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "big.chunked", "data": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    response = await conveyor.client.post(
        "/v1/events", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await problem(response, 413)
    await assert_nothing_published(namespace)


async def test_a_batch_over_the_limit_is_413_and_publishes_none(
    conveyor: Running, namespace: Namespace
) -> None:
    batch = [{"specversion": "1.0", "id": str(n), "source": "/s", "type": "t"} for n in range(4)]
    body = await problem(await conveyor.post(batch, "application/cloudevents-batch+json"), 413)
    assert "CONVEYOR_MAX_BATCH_EVENTS" in body["detail"]
    await assert_nothing_published(namespace)


async def test_a_batch_of_only_bad_entries_is_400(conveyor: Running, namespace: Namespace) -> None:
    response = await conveyor.post([{"id": "1"}, {"id": "2"}], "application/cloudevents-batch+json")
    assert response.status == 400
    results = (await response.json(content_type=PROBLEM))["results"]
    assert [r["error"]["attribute"] for r in results] == ["source", "source"]
    await assert_nothing_published(namespace)


async def test_unknown_routes_and_methods_answer_problem_json(conveyor: Running) -> None:
    await problem(await conveyor.client.get("/v1/nowhere"), 404)
    response = await conveyor.client.get("/v1/events")
    await problem(response, 405)
    assert "POST" in response.headers["Allow"]


async def test_api_keys_require_a_valid_bearer_key(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("keyed", ("#",), recorder),), api_keys=frozenset({"k-one", "k-two"})
    )
    document = {"type": "secure.thing"}

    missing = await conveyor.client.post("/v1/events", json=document)
    body = await problem(missing, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "k-one" not in str(body)
    wrong = await conveyor.client.post(
        "/v1/events", json=document, headers={"Authorization": "Bearer k-three"}
    )
    await problem(wrong, 401)
    right = await conveyor.client.post(
        "/v1/events", json=document, headers={"Authorization": "Bearer k-two"}
    )

    assert right.status == 202
    [received] = await recorder.wait_for(1)
    assert received.id == (await right.json())["id"]
