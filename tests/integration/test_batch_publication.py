"""A batch POST publishes its entries in one pass (issue 7) and answers each as it would alone."""

from __future__ import annotations

from typing import Any

from service import Role
from tests.conftest import Running, StartConveyor, subscription, take_published, url_with_port
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy
from tests.support.recorder import Recorder

BATCH = "application/cloudevents-batch+json"


def _event(event_id: str, data: Any = 1, source: str = "/batch") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "source": source,
        "type": "batch.item",
        "id": event_id,
        "data": data,
    }


async def _ids_in(conveyor: Running, namespace: Namespace, queue: str) -> list[str]:
    """The ids in `queue`, up to a sentinel posted after the requests answered."""
    taken = await take_published(conveyor, namespace, queue, sentinel_type="batch.sentinel")
    return sorted(message.message_id or "" for message in taken)


async def test_repeats_replays_and_conflicts_in_one_batch_are_answered_each_and_published_once(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor(
        (subscription("items", ("batch.*",), Recorder()),), role=Role.INGRESS
    )
    assert (await conveyor.post(_event("earlier"))).status == 202
    batch = [
        _event("new-1"),
        _event("twice"),
        _event("twice"),  # the same event again in the same batch: published once
        _event("earlier"),  # accepted by the request before: a replay
        _event("new-1", data=2, source="/other"),  # same id, other source: another event
        _event("earlier", data=99),  # same identity, other content: refused
        *[_event(f"bulk-{n}") for n in range(50)],
    ]

    response = await conveyor.post(batch, BATCH)

    assert response.status == 207
    results = (await response.json())["results"]
    assert results[0] == {"id": "new-1", "location": "/v1/events/new-1"}
    assert results[1] == results[2] == {"id": "twice", "location": "/v1/events/twice"}
    assert results[3] == {"id": "earlier", "location": "/v1/events/earlier"}
    assert results[4] == {"id": "new-1", "location": "/v1/events/new-1"}
    assert results[5]["error"]["type"] == "urn:conveyor:problem:event-id-conflict"
    assert [r["id"] for r in results[6:]] == [f"bulk-{n}" for n in range(50)]
    queue = namespace.topology.queue("items")
    expected = sorted(["earlier", "new-1", "new-1", "twice", *(f"bulk-{n}" for n in range(50))])
    assert await _ids_in(conveyor, namespace, queue) == expected


async def test_a_batch_while_the_broker_is_away_is_503_for_every_entry_and_can_be_sent_again(
    start_conveyor: StartConveyor, proxy: FaultProxy, amqp_url: str, namespace: Namespace
) -> None:
    conveyor = await start_conveyor(
        (subscription("items", ("batch.*",), Recorder()),),
        role=Role.INGRESS,
        amqp_url_override=url_with_port(amqp_url, proxy.port),
        publish_timeout=0.5,
    )
    await conveyor.ready()
    batch = [_event(f"stalled-{n}") for n in range(30)]
    proxy.stalled = True

    refused = await conveyor.post(batch, BATCH)

    assert refused.status == 503
    body = await refused.json(content_type="application/problem+json")
    assert body["type"] == "urn:conveyor:problem:batch-rejected"
    assert {entry["error"]["type"] for entry in body["results"]} == {
        "urn:conveyor:problem:publish-timeout"
    }
    proxy.stalled = False
    await namespace.take_all(namespace.topology.queue("items"))  # whatever the stall let through
    await conveyor.ready(timeout=20)

    again = await conveyor.post(batch, BATCH)

    # The claims of the refused entries were released: sent again, they are published again.
    assert again.status == 202
    assert [r["id"] for r in (await again.json())["results"]] == [f"stalled-{n}" for n in range(30)]
    ids = await _ids_in(conveyor, namespace, namespace.topology.queue("items"))
    assert set(ids) == {f"stalled-{n}" for n in range(30)}
