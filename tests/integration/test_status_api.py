"""The status API's edges: odd ids, bad waits, keys, expiry, routing, two processes."""

from __future__ import annotations

import asyncio

import pytest

from service import Role
from service.broker.routing import routed_subscriptions
from tests.conftest import StartConveyor, subscription
from tests.support.clock import ShiftedClock
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder

PROBLEM = "urn:conveyor:problem:"


async def test_an_unknown_id_is_404_problem(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS)

    status, body = await conveyor.status("/v1/events/never-sent", wait="200ms")

    assert status == 404
    assert body["type"] == PROBLEM + "event-not-found"


@pytest.mark.parametrize("wait", ["soon", "-1s", "61s", "1h"])
async def test_a_bad_wait_is_400_problem(start_conveyor: StartConveyor, wait: str) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS)

    status, body = await conveyor.status("/v1/events/x", wait=wait)

    assert status == 400
    assert body["type"] == PROBLEM + "invalid-wait"


async def test_one_id_from_two_sources_needs_the_source(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS)
    for source in ("/a", "/b"):
        assert (await conveyor.post({"type": "t.x", "id": "same", "source": source})).status == 202

    status, body = await conveyor.status("/v1/events/same")
    assert status == 409
    assert body["type"] == PROBLEM + "ambiguous-event-id"
    assert body["sources"] == ["/a", "/b"]

    status, chosen = await conveyor.status("/v1/events/same", source="/b")
    assert (status, chosen["source"]) == (200, "/b")


async def test_an_id_with_a_slash_and_spaces_round_trips_through_location(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS)
    response = await conveyor.post({"type": "t.x", "id": "orders/42 ä?", "source": "/s"})
    location = response.headers["Location"]

    assert location == "/v1/events/orders%2F42%20%C3%A4%3F"
    status, body = await conveyor.status(location)
    assert (status, body["id"]) == (200, "orders/42 ä?")


async def test_status_needs_a_key_when_keys_are_set(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS, api_keys=frozenset({"s3cret"}))

    denied = await conveyor.client.get("/v1/events/x")
    allowed = await conveyor.client.get("/v1/events/x", headers={"Authorization": "Bearer s3cret"})

    assert denied.status == 401
    assert allowed.status == 404


async def test_an_admin_token_reads_statuses_too_but_publishes_nothing(
    start_conveyor: StartConveyor,
) -> None:
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    conveyor = await start_conveyor(
        api_keys=frozenset({"s3cret"}), admin_tokens=(("ops", "admin-token-0123456789"),)
    )

    read = await conveyor.client.get("/v1/events/x", headers=admin)
    wrong = await conveyor.client.get("/v1/events/x", headers={"Authorization": "Bearer nope"})
    publish = await conveyor.client.post(
        "/v1/events", json={"id": "a", "source": "/s", "type": "t"}, headers=admin
    )

    assert read.status == 404  # past authentication: no such event
    assert wrong.status == 401
    assert publish.status == 401


async def test_a_replayed_answer_carries_the_location_too(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS)
    headers = {"Idempotency-Key": "loc-1"}
    document = {"type": "t.x", "id": "r-9", "source": "/s"}

    first = await conveyor.client.post("/v1/events", json=document, headers=headers)
    again = await conveyor.client.post("/v1/events", json=document, headers=headers)

    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["Location"] == again.headers["Location"] == "/v1/events/r-9"


async def test_statuses_expire_after_the_status_ttl(start_conveyor: StartConveyor) -> None:
    clock = ShiftedClock()
    clock.advance(86_400)  # a day ahead of the machine's: only the clock given to the app counts
    conveyor = await start_conveyor(role=Role.INGRESS, status_ttl=60, clock=clock)
    await conveyor.post({"type": "t.x", "id": "short-lived", "source": "/s"})
    assert (await conveyor.status("/v1/events/short-lived"))[0] == 200

    clock.advance(50)
    assert (await conveyor.status("/v1/events/short-lived"))[0] == 200
    clock.advance(11)

    assert (await conveyor.status("/v1/events/short-lived"))[0] == 404


async def test_two_processes_on_one_postgresql_store_agree(
    start_conveyor: StartConveyor, postgres_url: str
) -> None:
    recorder = Recorder()
    recorder.release.clear()
    subscriptions = (subscription("shared", ("#",), recorder),)
    ingress = await start_conveyor(subscriptions, role=Role.INGRESS, store_url=postgres_url)
    worker_and_api = await start_conveyor(subscriptions, store_url=postgres_url)
    headers = {"Idempotency-Key": "cross-1"}
    document = {"type": "t.x", "id": "x-1", "source": "/s"}

    accepted = await ingress.client.post("/v1/events", json=document, headers=headers)
    replayed = await worker_and_api.client.post("/v1/events", json=document, headers=headers)
    assert (accepted.status, replayed.headers["Idempotent-Replayed"]) == (202, "true")

    # The ingress process waits for an outcome only the other process produces.
    waiting = asyncio.create_task(ingress.status("/v1/events/x-1", wait="20s"))
    await ingress.long_polling()
    assert not waiting.done()
    recorder.release.set()
    status, seen_by_ingress = await asyncio.wait_for(waiting, timeout=15)
    _, seen_by_worker = await worker_and_api.status("/v1/events/x-1")

    assert status == 200
    assert seen_by_ingress == seen_by_worker
    assert seen_by_ingress["subscriptions"]["shared"]["state"] == "succeeded"
    assert recorder.ids() == ["x-1"]


async def test_the_recorded_routing_matches_the_brokers(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    subscriptions = (
        subscription("star", ("order.*",), Recorder()),
        subscription("hash", ("order.#",), Recorder()),
        subscription("mid", ("*.eu.#",), Recorder()),
        subscription("exact", ("order.placed",), Recorder()),
        subscription("all", ("#",), Recorder()),
    )
    types = ["order", "order.placed", "order.placed.eu", "x.eu", "order.eu", "a.b.eu", ""]
    await start_conveyor(subscriptions, role=Role.INGRESS)
    for event_type in types:
        await namespace.publish_raw(b"{}", routing_key=event_type, message_id=event_type)

    for sub in subscriptions:
        queue = namespace.topology.queue(sub.name)
        expected = [t for t in types if sub.name in routed_subscriptions(subscriptions, t)]
        taken = await namespace.take_until(queue, await namespace.sentinel_into(queue))
        assert sorted(message.routing_key or "" for message in taken) == sorted(expected), sub
