"""Saying yes once: Idempotency-Key and CloudEvents identity, on SQLite and shared PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from service import Role
from tests.conftest import Running, StartConveyor, subscription, take_published, url_with_port
from tests.support.clock import ShiftedClock
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy
from tests.support.recorder import Recorder


async def post(
    conveyor: Running, document: Any, key: str | None = None, ct: str = "application/json"
) -> Any:
    headers = {"Content-Type": ct} | ({"Idempotency-Key": key} if key else {})
    return await conveyor.client.post("/v1/events", json=document, headers=headers)


async def settle(conveyor: Running, namespace: Namespace) -> list[str]:
    """The ids in the `once` queue, up to a sentinel posted after the requests answered."""
    queue = namespace.topology.queue("once")
    taken = await take_published(conveyor, namespace, queue, sentinel_type="test.sentinel")
    return [message.message_id or "" for message in taken]


async def test_a_repeated_key_returns_the_first_answer_and_publishes_nothing(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor((subscription("once", ("#",), Recorder()),), role=Role.INGRESS)
    first = await post(conveyor, {"type": "pay.charge", "data": {"cents": 500}}, key="charge-42")
    again = await post(conveyor, {"type": "pay.charge", "data": {"cents": 500}}, key="charge-42")

    assert first.status == again.status == 202
    assert await first.json() == await again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    ids = await settle(conveyor, namespace)
    assert ids == [(await first.json())["id"]]


async def test_a_key_is_forgotten_after_the_idempotency_ttl(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    clock = ShiftedClock()
    clock.advance(86_400)  # a day ahead of the machine's: only the clock given to the app counts
    conveyor = await start_conveyor(
        (subscription("once", ("#",), Recorder()),),
        role=Role.INGRESS,
        idempotency_ttl=3600,
        clock=clock,
    )
    document = {"type": "pay.charge", "data": {"cents": 500}}
    first = await post(conveyor, document, key="monthly")
    clock.advance(3599)
    replayed = await post(conveyor, document, key="monthly")
    clock.advance(2)
    again = await post(conveyor, document, key="monthly")

    assert first.status == replayed.status == again.status == 202
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in again.headers  # past the TTL: a new request
    first_id, again_id = (await first.json())["id"], (await again.json())["id"]
    assert first_id != again_id
    assert await settle(conveyor, namespace) == [first_id, again_id]


async def test_the_same_key_with_another_body_is_422(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor((subscription("once", ("#",), Recorder()),), role=Role.INGRESS)
    assert (await post(conveyor, {"type": "pay.charge", "data": 1}, key="k-1")).status == 202

    conflict = await post(conveyor, {"type": "pay.charge", "data": 2}, key="k-1")

    assert conflict.status == 422
    body = await conflict.json(content_type="application/problem+json")
    assert body["type"] == "urn:conveyor:problem:idempotency-conflict"
    assert len(await settle(conveyor, namespace)) == 1


async def test_concurrent_requests_with_one_key_publish_once(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor((subscription("once", ("#",), Recorder()),), role=Role.INGRESS)
    document = {"type": "pay.charge", "id": "c-1", "source": "/pay", "data": 1}

    responses = await asyncio.gather(*(post(conveyor, document, key="burst") for _ in range(10)))

    assert {response.status for response in responses} == {202}
    assert {(await response.json())["id"] for response in responses} == {"c-1"}
    assert await settle(conveyor, namespace) == ["c-1"]


async def test_an_event_repeated_by_source_and_id_is_published_once(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    conveyor = await start_conveyor((subscription("once", ("#",), Recorder()),), role=Role.INGRESS)
    event = {"specversion": "1.0", "id": "e-7", "source": "/orders", "type": "order.placed"}
    ct = "application/cloudevents+json"

    assert (await post(conveyor, {**event, "data": {"n": 1}}, ct=ct)).status == 202
    assert (await post(conveyor, {**event, "data": {"n": 1}}, ct=ct)).status == 202
    other_source = await post(conveyor, {**event, "source": "/elsewhere"}, ct=ct)
    changed = await post(conveyor, {**event, "data": {"n": 2}}, ct=ct)

    assert other_source.status == 202  # ids are unique per source only
    assert changed.status == 422
    assert sorted(await settle(conveyor, namespace)) == ["e-7", "e-7"]


async def test_a_failed_publish_releases_the_key_so_a_retry_goes_through(
    start_conveyor: StartConveyor, namespace: Namespace, proxy: FaultProxy, amqp_url: str
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("once", ("#",), recorder),),
        amqp_url_override=url_with_port(amqp_url, proxy.port),
        publish_timeout=0.5,
    )
    document = {"type": "pay.charge", "id": "r-1", "source": "/pay"}
    proxy.accepting = False
    proxy.cut_all()
    response = await post(conveyor, document, key="retry-me")
    statuses = [response.status]
    proxy.accepting = True

    # The client retries with the same key until it gets a final answer; a released claim
    # means that answer is a real 202, not a replay of the 503 nor a 409/422.
    for _ in range(200):
        response = await post(conveyor, document, key="retry-me")
        statuses.append(response.status)
        if response.status == 202:
            break
        await asyncio.sleep(0.1)
    assert statuses[0] == 503
    assert statuses[-1] == 202
    assert set(statuses) <= {503, 202}
    assert "Idempotent-Replayed" not in response.headers
    await recorder.wait_for(1)
    assert recorder.ids() == ["r-1"]


async def test_two_processes_sharing_postgresql_publish_a_repeated_key_once(
    start_conveyor: StartConveyor, namespace: Namespace, postgres_url: str
) -> None:
    subscriptions = (subscription("once", ("#",), Recorder()),)
    first = await start_conveyor(subscriptions, role=Role.INGRESS, store_url=postgres_url)
    second = await start_conveyor(subscriptions, role=Role.INGRESS, store_url=postgres_url)
    document = {"type": "pay.charge", "data": {"cents": 7}}

    answers = await asyncio.gather(
        *(post(conveyor, document, key="shared") for conveyor in (first, second, first, second))
    )

    assert {answer.status for answer in answers} == {202}
    assert len({(await answer.json())["id"] for answer in answers}) == 1
    assert len(await settle(second, namespace)) == 1
