"""Dead letters through the admin API: list and filter, show, replay, discard; nothing lost."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson

from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Gate, Recorder

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BASE = "/v1/admin/subscriptions/orders/dead-letters"


async def call(
    conveyor: Running, method: str, path: str, body: Any = None, headers: dict[str, str] = ADMIN
) -> tuple[int, Any]:
    response = await conveyor.client.request(method, path, json=body, headers=headers)
    return response.status, await response.json(content_type=None)


async def dead_lettered(conveyor: Running, *events: tuple[str, str]) -> None:
    for event_id, event_type in events:
        document = {"type": event_type, "id": event_id, "source": "/shop"}
        assert (await conveyor.post(document)).status == 202
    for event_id, _ in events:
        _, status = await conveyor.status(f"/v1/events/{event_id}", wait="10s")
        assert status["state"] == "dead-lettered"


async def start(start_conveyor: StartConveyor, gate: Gate) -> Running:
    return await start_conveyor(
        (subscription("orders", ("order.*",), gate),), admin_tokens=(("ops", TOKEN),)
    )


async def test_listing_filters_and_pages_without_taking_anything_away(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start(start_conveyor, Gate())
    await dead_lettered(conveyor, ("a", "order.placed"), ("b", "order.paid"), ("c", "order.placed"))

    status, everything = await call(conveyor, "GET", BASE)
    _, placed = await call(conveyor, "GET", f"{BASE}?type=order.placed")
    _, page = await call(conveyor, "GET", f"{BASE}?limit=1&offset=1")
    _, by_error = await call(conveyor, "GET", f"{BASE}?error_class=TimeoutError")

    assert status == 200
    assert everything["messages"] == everything["matching"] == 3
    first = everything["entries"][0]
    assert first["event"] == {"id": "a", "source": "/shop", "type": "order.placed"}
    assert first["reason"] == "permanent-error"
    assert first["error"] == {
        "class": "PermanentError",
        "message": "order.placed refused: gate closed",
    }
    assert first["attempts"] == 1
    assert [e["event"]["id"] for e in placed["entries"]] == ["a", "c"]
    assert [e["event"]["id"] for e in page["entries"]] == ["b"]
    assert by_error["matching"] == 0
    # Listing put every message back in order, none lost or doubled.
    again = [
        m.message_id
        for m in await namespace.take_all(namespace.topology.dead_letter_queue("orders"))
    ]
    assert again == ["a", "b", "c"]


async def test_show_gives_data_headers_and_the_failure(start_conveyor: StartConveyor) -> None:
    conveyor = await start(start_conveyor, Gate())
    await dead_lettered(conveyor, ("s-1", "order.placed"))
    _, listed = await call(conveyor, "GET", BASE)
    entry_id = listed["entries"][0]["id"]

    status, shown = await call(conveyor, "GET", f"{BASE}/{entry_id}")
    missing, problem = await call(conveyor, "GET", f"{BASE}/nope")

    assert status == 200
    assert shown["event"]["id"] == "s-1"
    assert shown["data_base64"] is False
    assert shown["headers"]["x-conveyor-reason"] == "permanent-error"
    assert "PermanentError" in shown["headers"]["x-conveyor-error-traceback"]
    assert missing == 404
    assert problem["type"] == "urn:conveyor:problem:dead-letter-not-found"


async def test_replay_sends_exactly_the_selected_back_and_they_are_handled(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    gate = Gate()
    conveyor = await start(start_conveyor, gate)
    await dead_lettered(
        conveyor, ("r-1", "order.placed"), ("r-2", "order.paid"), ("r-3", "order.placed")
    )
    gate.open = True

    status, replayed = await call(
        conveyor, "POST", f"{BASE}/replay", {"filter": {"type": "order.placed"}}
    )

    assert status == 200
    assert (replayed["replayed"], replayed["kept"]) == (2, 1)
    handled = await gate.handled.wait_for(2)
    assert sorted(event.id for event in handled) == ["r-1", "r-3"]
    assert all(event.attempt == 1 for event in handled)  # a fresh set of attempts
    left = await namespace.take_all(namespace.topology.dead_letter_queue("orders"))
    assert [m.message_id for m in left] == ["r-2"]
    _, status_after = await conveyor.status("/v1/events/r-1", wait="10s")
    assert status_after["subscriptions"]["orders"]["state"] == "succeeded"
    metrics = await (await conveyor.client.get("/metrics")).text()
    assert 'conveyor_dead_letters_replayed_total{queue="orders"} 2.0' in metrics


async def test_discard_removes_exactly_the_selected(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start(start_conveyor, Gate())
    await dead_lettered(conveyor, ("d-1", "order.placed"), ("d-2", "order.paid"))
    _, listed = await call(conveyor, "GET", BASE)
    doomed = [e["id"] for e in listed["entries"] if e["event"]["id"] == "d-2"]

    status, discarded = await call(conveyor, "POST", f"{BASE}/discard", {"ids": doomed})
    refused, problem = await call(conveyor, "POST", f"{BASE}/discard", {})

    assert status == 200
    assert (discarded["discarded"], discarded["kept"]) == (1, 1)
    assert refused == 400  # a discard must say what it applies to
    assert problem["type"] == "urn:conveyor:problem:invalid-admin-request"
    left = await namespace.take_all(namespace.topology.dead_letter_queue("orders"))
    assert [m.message_id for m in left] == ["d-1"]


async def test_unrouted_events_can_be_listed_and_replayed(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start(start_conveyor, Gate())
    assert (
        await conveyor.post({"type": "invoice.sent", "id": "u-1", "source": "/b"})
    ).status == 202

    _, listed = await call(conveyor, "GET", "/v1/admin/unrouted")
    status, replayed = await call(conveyor, "POST", "/v1/admin/unrouted/replay", {"all": True})

    assert [e["event"]["id"] for e in listed["entries"]] == ["u-1"]
    assert (status, replayed["replayed"]) == (200, 1)
    # Still no subscription for it: the alternate exchange keeps it again, nothing is lost.
    back = await namespace.take_at_least(namespace.topology.unrouted, 1)
    assert [m.message_id for m in back] == ["u-1"]
    assert (back[0].headers or {})["x-conveyor-replays"] == 1


async def test_dead_letter_routes_need_the_admin_token(start_conveyor: StartConveyor) -> None:
    conveyor = await start(start_conveyor, Gate())

    without, _ = await call(conveyor, "GET", BASE, headers={})
    wrong, _ = await call(
        conveyor,
        "POST",
        f"{BASE}/replay",
        {"all": True},
        {"Authorization": "Bearer nope-nope-nope"},
    )
    unknown, _ = await call(conveyor, "GET", "/v1/admin/subscriptions/ghost/dead-letters")

    assert (without, wrong, unknown) == (401, 403, 404)


async def test_a_filter_never_widens_into_everything(start_conveyor: StartConveyor) -> None:
    conveyor = await start(start_conveyor, Gate())
    await dead_lettered(conveyor, ("w-1", "order.placed"))

    bodies: list[dict[str, Any]] = [
        {"filter": {"limit": 10}},
        {"filter": {"type": None}},
        {"filter": {"since": 123}},
        {"filter": {}},
    ]
    answers = [await call(conveyor, "POST", f"{BASE}/discard", body) for body in bodies]

    assert [status for status, _ in answers] == [400, 400, 400, 400]
    _, listed = await call(conveyor, "GET", BASE)
    assert listed["messages"] == 1  # nothing was discarded


async def test_a_replay_to_a_missing_queue_moves_nothing(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    worker = await start(start_conveyor, Gate())
    await dead_lettered(worker, ("m-1", "order.placed"), ("m-2", "order.placed"))
    # A consumer's robust channel declares its deleted queue again (and a race with it made
    # this test flaky): the replay goes through an ingress, which consumes nothing.
    await worker.client.close()
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Gate()),),
        admin_tokens=(("ops", TOKEN),),
        role=Role.INGRESS,
    )
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(namespace.topology.queue("orders"))

    status, problem = await call(conveyor, "POST", f"{BASE}/replay", {"all": True})

    assert status == 404
    assert problem["type"] == "urn:conveyor:problem:queue-not-declared"
    left = await namespace.take_all(namespace.topology.dead_letter_queue("orders"))
    assert sorted(m.message_id or "" for m in left) == ["m-1", "m-2"]


async def test_unrouted_events_listed_before_reach_a_subscription_added_since(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start(start_conveyor, Gate())
    # A structured-mode message with no message_id from another publisher, and one via HTTP.
    await namespace.publish_raw(
        orjson.dumps({"specversion": "1.0", "id": "raw-1", "source": "/raw", "type": "invoice.x"}),
        routing_key="invoice.x",
        content_type="application/cloudevents+json",
    )
    assert (await conveyor.post({"type": "invoice.y", "id": "u-2", "source": "/b"})).status == 202
    _, first = await call(conveyor, "GET", "/v1/admin/unrouted")
    _, second = await call(conveyor, "GET", "/v1/admin/unrouted")
    assert {e["id"] for e in first["entries"]} == {e["id"] for e in second["entries"]}
    assert {e["event"]["type"] for e in second["entries"]} == {"invoice.x", "invoice.y"}

    invoices = Recorder()
    await start_conveyor((subscription("invoices", ("invoice.*",), invoices),))
    status, replayed = await call(conveyor, "POST", "/v1/admin/unrouted/replay", {"all": True})

    assert (status, replayed["replayed"]) == (200, 2)
    handled = await invoices.wait_for(2)
    assert sorted(event.id for event in handled) == ["raw-1", "u-2"]
