"""A 422 says what collided: an event's source and id, or the request's Idempotency-Key."""

from __future__ import annotations

from typing import Any

from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

PROBLEM = "application/problem+json"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def _event(event_id: str, data: Any, source: str = "/orders") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": "order.placed",
        "data": data,
    }


async def _post(conveyor: Running, document: Any, content_type: str, key: str | None = None) -> Any:
    headers = {"Content-Type": content_type} | ({"Idempotency-Key": key} if key else {})
    return await conveyor.client.post("/v1/events", json=document, headers=headers)


async def _start(start_conveyor: StartConveyor) -> Running:
    return await start_conveyor((subscription("once", ("#",), Recorder()),), role=Role.INGRESS)


async def _published(namespace: Namespace, sentinel: Running) -> list[str]:
    """The ids in the queue once a sentinel event sent last arrived: nothing else came after."""
    assert (await _post(sentinel, _event("sentinel", 0), STRUCTURED)).status == 202
    queue = namespace.topology.queue("once")
    taken = await namespace.take_at_least(queue, 1)
    while taken[-1].message_id != "sentinel":
        taken += await namespace.take_at_least(queue, 1)
    return [message.message_id or "" for message in taken]


async def test_the_same_source_and_id_with_other_data_names_them_not_a_key(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await _start(start_conveyor)
    assert (await _post(conveyor, _event("o-1", {"total": 1}), STRUCTURED)).status == 202

    response = await _post(conveyor, _event("o-1", {"total": 2}), STRUCTURED)

    assert response.status == 422
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == "urn:conveyor:problem:event-id-conflict"
    assert (problem["source"], problem["id"]) == ("/orders", "o-1")
    assert "source '/orders' and id 'o-1'" in problem["detail"]
    assert "Idempotency-Key" not in problem["detail"]
    assert "idempotency_key" not in problem
    assert await _published(namespace, conveyor) == ["o-1", "sentinel"]


async def test_a_reused_idempotency_key_names_the_key(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await _start(start_conveyor)
    assert (await _post(conveyor, _event("k-1", 1), STRUCTURED, key="pay-42")).status == 202

    # Another event altogether (its own source and id) under the same key.
    response = await _post(conveyor, _event("k-2", 1), STRUCTURED, key="pay-42")

    assert response.status == 422
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == "urn:conveyor:problem:idempotency-conflict"
    assert problem["idempotency_key"] == "pay-42"
    assert "Idempotency-Key 'pay-42'" in problem["detail"]
    assert await _published(namespace, conveyor) == ["k-1", "sentinel"]


async def test_a_new_key_on_an_event_id_used_for_other_content_is_an_event_id_conflict(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await _start(start_conveyor)
    assert (await _post(conveyor, _event("o-2", 1), STRUCTURED, key="first")).status == 202

    response = await _post(conveyor, _event("o-2", 2), STRUCTURED, key="second")

    assert response.status == 422
    problem = await response.json(content_type=PROBLEM)
    assert problem["type"] == "urn:conveyor:problem:event-id-conflict"
    assert (problem["source"], problem["id"]) == ("/orders", "o-2")
    # The key was released, not kept with the refusal: the client may send it with a new id.
    retried = await _post(conveyor, _event("o-3", 2), STRUCTURED, key="second")
    assert retried.status == 202
    assert await _published(namespace, conveyor) == ["o-2", "o-3", "sentinel"]


async def test_a_batch_entry_that_collides_names_its_source_and_id(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await _start(start_conveyor)
    assert (await _post(conveyor, _event("b-1", 1), STRUCTURED)).status == 202

    response = await _post(conveyor, [_event("b-2", 1), _event("b-1", 99)], BATCH)
    everything = await _post(conveyor, [_event("b-1", 98)], BATCH)

    assert response.status == 207
    fine, collided = (await response.json())["results"]
    assert fine == {"id": "b-2", "location": "/v1/events/b-2"}
    assert collided["error"]["type"] == "urn:conveyor:problem:event-id-conflict"
    assert (collided["error"]["source"], collided["error"]["id"]) == ("/orders", "b-1")
    assert everything.status == 422
    rejected = await everything.json(content_type=PROBLEM)
    assert rejected["type"] == "urn:conveyor:problem:batch-rejected"
    [entry] = rejected["results"]
    assert entry["error"]["type"] == "urn:conveyor:problem:event-id-conflict"
    assert await _published(namespace, conveyor) == ["b-1", "b-2", "sentinel"]
