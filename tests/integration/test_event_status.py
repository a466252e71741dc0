"""GET /v1/events/{id}: statuses as events move, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from typing import Any

from consumers import PermanentError
from consumers.retry import RetryPolicy
from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually


async def accept(conveyor: Running, document: dict[str, Any]) -> str:
    response = await conveyor.post(document)
    assert response.status == 202, await response.text()
    location: str = response.headers["Location"]
    assert location == (await response.json())["location"]
    return location


async def state_of(conveyor: Running, location: str, name: str) -> str:
    status, body = await conveyor.status(location)
    assert status == 200, body
    return str(body["subscriptions"][name]["state"])


async def test_status_walks_from_pending_to_succeeded(
    start_conveyor: StartConveyor, store_url: str
) -> None:
    recorder = Recorder()
    subscriptions = (subscription("billing", ("order.*",), recorder),)
    ingress = await start_conveyor(subscriptions, role=Role.INGRESS, store_url=store_url)
    location = await accept(
        ingress, {"type": "order.placed", "id": "o-1", "source": "/shop", "data": {"n": 1}}
    )
    assert location == "/v1/events/o-1"

    status, pending = await ingress.status(location)
    assert status == 200
    assert pending["state"] == "pending"
    assert pending["done"] is False
    assert (pending["id"], pending["source"], pending["type"]) == ("o-1", "/shop", "order.placed")
    assert pending["attributes"]["datacontenttype"] == "application/json"
    assert pending["accepted_at"] is not None
    assert pending["subscriptions"]["billing"]["state"] == "pending"
    assert pending["subscriptions"]["billing"]["attempts"] == 0

    # A worker sharing the store picks the event up.
    await start_conveyor(subscriptions, role=Role.WORKER, store_url=store_url)
    await recorder.wait_for(1)
    status, done = await ingress.status(location, wait="10s")

    assert status == 200
    assert done["state"] == "succeeded"
    assert done["done"] is True
    billing = done["subscriptions"]["billing"]
    assert (billing["state"], billing["attempts"]) == ("succeeded", 1)
    assert billing["first_attempt_at"] is not None
    assert billing["finished_at"] is not None
    assert "last_error" not in billing
    assert recorder.ids() == ["o-1"]


async def test_status_walks_through_retrying_to_dead_lettered(
    start_conveyor: StartConveyor, namespace: Namespace, store_url: str
) -> None:
    def always_fail(_event: object) -> bool:
        return True

    retry = RetryPolicy(in_process=1, delays=(1.0,))
    sub = subscription("flaky", ("job.#",), Recorder(fail=always_fail), retry=retry)
    conveyor = await start_conveyor((sub,), store_url=store_url)
    location = await accept(conveyor, {"type": "job.run", "id": "j-1", "source": "/jobs"})

    seen: list[dict[str, Any]] = []

    async def retrying_seen() -> bool:
        _, body = await conveyor.status(location)
        seen.append(body["subscriptions"].get("flaky", {}))
        return seen[-1].get("state") == "retrying"

    await eventually(retrying_seen, what="the retrying state")
    retrying = seen[-1]
    assert retrying["attempts"] == 1
    assert retrying["next_attempt_at"] > retrying["updated_at"]
    assert retrying["last_error"] == {"class": "RuntimeError", "message": "told to fail on j-1"}

    status, final = await conveyor.status(location, wait="10s")
    assert status == 200
    assert final["state"] == "dead-lettered"
    assert final["done"] is True
    flaky = final["subscriptions"]["flaky"]
    assert (flaky["state"], flaky["attempts"]) == ("dead-lettered", 2)
    assert flaky["last_error"] == {
        "class": "RuntimeError",
        "message": "told to fail on j-1",
        "reason": "retries-exhausted",
    }
    assert "next_attempt_at" not in flaky
    dead = await namespace.take_at_least(namespace.topology.dead_letter_queue("flaky"), 1)
    assert [message.message_id for message in dead] == ["j-1"]


async def test_long_poll_returns_once_the_event_completes(
    start_conveyor: StartConveyor, store_url: str
) -> None:
    recorder = Recorder()
    recorder.release.clear()  # the handler waits until the test lets it finish
    conveyor = await start_conveyor((subscription("slow", ("#",), recorder),), store_url=store_url)
    location = await accept(conveyor, {"type": "report.build", "id": "r-1", "source": "/r"})

    async def processing() -> bool:
        return await state_of(conveyor, location, "slow") == "processing"

    await eventually(processing, what="the processing state")
    status, still_running = await conveyor.status(location, wait="300ms")
    assert (status, still_running["done"]) == (200, False)  # the wait ran out first

    waiting = asyncio.create_task(conveyor.status(location, wait="20s"))
    await conveyor.long_polling()
    assert not waiting.done()
    recorder.release.set()
    status, finished = await asyncio.wait_for(waiting, timeout=15)

    assert status == 200
    assert finished["done"] is True
    assert finished["subscriptions"]["slow"]["state"] == "succeeded"


async def test_status_survives_a_restart(start_conveyor: StartConveyor, store_url: str) -> None:
    sub = subscription("durable", ("#",), Recorder())
    first = await start_conveyor((sub,), store_url=store_url)
    location = await accept(first, {"type": "a.b", "id": "d-1", "source": "/d"})
    _, before = await first.status(location, wait="10s")
    assert before["state"] == "succeeded"
    await first.client.close()

    second = await start_conveyor((sub,), store_url=store_url)
    status, after = await second.status(location)

    assert status == 200
    assert after == before


async def test_an_event_no_subscription_takes_is_unrouted(
    start_conveyor: StartConveyor, store_url: str
) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), store_url=store_url
    )
    location = await accept(conveyor, {"type": "invoice.sent", "id": "u-1", "source": "/x"})

    status, body = await conveyor.status(location, wait="5s")

    assert status == 200
    assert (body["state"], body["done"], body["subscriptions"]) == ("unrouted", True, {})


async def test_a_permanent_failure_is_dead_lettered_at_once(
    start_conveyor: StartConveyor, store_url: str
) -> None:
    async def reject(_event: object) -> None:
        raise PermanentError("no such customer")

    retry = RetryPolicy(in_process=3, delays=(60.0,))
    conveyor = await start_conveyor(
        (subscription("strict", ("#",), reject, retry=retry),), store_url=store_url
    )
    location = await accept(conveyor, {"type": "c.x", "id": "p-1", "source": "/c"})

    _, body = await conveyor.status(location, wait="10s")

    strict = body["subscriptions"]["strict"]
    assert (strict["state"], strict["attempts"]) == ("dead-lettered", 1)
    assert strict["last_error"]["reason"] == "permanent-error"
    assert strict["last_error"]["class"] == "PermanentError"


async def test_an_event_published_over_amqp_is_not_done_until_every_subscription_is(
    start_conveyor: StartConveyor, namespace: Namespace, store_url: str
) -> None:
    slow = Recorder()
    slow.release.clear()
    subscriptions = (
        subscription("fast", ("order.*",), Recorder()),
        subscription("slow", ("order.*",), slow),
    )
    conveyor = await start_conveyor(subscriptions, store_url=store_url)
    headers = {"ce-id": "amqp-1", "ce-source": "/amqp", "ce-type": "order.placed"}
    await namespace.publish_raw(
        b"{}", routing_key="order.placed", headers=headers | {"ce-specversion": "1.0"}
    )

    async def fast_done() -> bool:
        status, body = await conveyor.status("/v1/events/amqp-1")
        return status == 200 and body["subscriptions"].get("fast", {}).get("state") == "succeeded"

    await eventually(fast_done, what="the fast subscription to succeed")
    _, partial = await conveyor.status("/v1/events/amqp-1")
    assert partial["done"] is False
    assert partial["subscriptions"]["slow"]["state"] in {"pending", "processing"}

    slow.release.set()
    _, finished = await conveyor.status("/v1/events/amqp-1", wait="10s")
    assert (finished["state"], finished["done"]) == ("succeeded", True)
    assert finished["accepted_at"] is None  # it never came through the ingress
