"""The broker going away: no false 202, readiness tells the truth, everything comes back."""

from __future__ import annotations

from typing import Any

from yarl import URL

from tests.conftest import Running, StartConveyor, subscription, url_with_port
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

READYZ_ADMIN_TOKEN = "readyz-admin-token-0123"


async def readiness(conveyor: Running) -> tuple[int, dict[str, Any]]:
    response = await conveyor.client.get("/readyz")
    return response.status, await response.json()


async def assert_503_with_retry_after(conveyor: Running, document: dict[str, Any]) -> None:
    response = await conveyor.post(document)
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"].isdigit()
    body = await response.json(content_type="application/problem+json")
    assert body["status"] == 503


async def test_broker_down_at_start_then_ready_once_it_answers(
    start_conveyor: StartConveyor, proxy: FaultProxy, amqp_url: str
) -> None:
    proxy.accepting = False
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("late", ("late.*",), recorder),),
        wait_ready=False,
        amqp_url_override=url_with_port(amqp_url, proxy.port),
    )

    status, body = await readiness(conveyor)
    assert status == 503
    assert body["checks"]["broker"].startswith("not connected")
    assert "broker" in body["missing"]
    await assert_503_with_retry_after(conveyor, {"type": "late.early"})
    assert (await conveyor.client.get("/livez")).status == 200

    proxy.accepting = True
    await conveyor.ready(timeout=15)
    response = await conveyor.post({"type": "late.arrival", "id": "after-start"})
    assert response.status == 202
    assert [event.id for event in await recorder.wait_for(1)] == ["after-start"]


async def test_connection_cut_no_false_202_and_consumers_come_back(
    start_conveyor: StartConveyor, proxy: FaultProxy, amqp_url: str, namespace: Namespace
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("survivor", ("survive.*",), recorder),),
        amqp_url_override=url_with_port(amqp_url, proxy.port),
    )
    assert (await conveyor.post({"type": "survive.before", "id": "before"})).status == 202
    await recorder.wait_for(1)

    proxy.accepting = False
    proxy.cut_all()

    async def not_ready() -> bool:
        return (await readiness(conveyor))[0] == 503

    await eventually(not_ready, timeout=5, what="readiness to notice the cut")
    await assert_503_with_retry_after(conveyor, {"type": "survive.during"})

    proxy.accepting = True
    await conveyor.ready(timeout=20)
    assert (await conveyor.post({"type": "survive.after", "id": "after"})).status == 202

    # The consumer was restored on the new connection, not just the publisher.
    async def handled_after() -> bool:
        return "after" in recorder.ids()

    await eventually(handled_after, timeout=15, what="the event sent after the reconnect")
    # At least once: "before" may come again if the cut swallowed its ack.
    assert set(recorder.ids()) == {"before", "after"}
    status, body = await readiness(conveyor)
    assert status == 200
    assert body["checks"]["subscription:survivor"] == "consuming"


async def test_a_stalled_link_answers_503_within_the_publish_timeout(
    start_conveyor: StartConveyor, proxy: FaultProxy, amqp_url: str, namespace: Namespace
) -> None:
    conveyor = await start_conveyor(
        amqp_url_override=url_with_port(amqp_url, proxy.port), publish_timeout=0.5
    )
    proxy.stalled = True

    response = await conveyor.post({"type": "stalled.event", "id": "maybe"})

    assert response.status == 503
    body = await response.json(content_type="application/problem+json")
    assert body["type"] == "urn:conveyor:problem:publish-timeout"
    proxy.stalled = False


async def test_only_an_admin_token_sees_why_the_broker_is_not_connected(
    start_conveyor: StartConveyor, proxy: FaultProxy, amqp_url: str
) -> None:
    proxy.accepting = False
    # Two addresses: when neither answers, the problem names each one.
    address = URL(url_with_port(amqp_url, proxy.port)).with_path("/private-vhost")
    conveyor = await start_conveyor(
        wait_ready=False,
        amqp_url_override=f"{address},{address}",
        admin_tokens=(("ops", READYZ_ADMIN_TOKEN),),
    )

    async def broker_state(headers: dict[str, str]) -> tuple[int, str]:
        response = await conveyor.client.get("/readyz", headers=headers)
        return response.status, (await response.json())["checks"]["broker"]

    async def tried() -> bool:
        _, state = await broker_state({"Authorization": f"Bearer {READYZ_ADMIN_TOKEN}"})
        return "NoBrokerAnsweredError" in state

    await eventually(tried, timeout=15, what="a connection attempt")
    status, detail = await broker_state({"Authorization": f"Bearer {READYZ_ADMIN_TOKEN}"})
    assert status == 503
    assert f"127.0.0.1:{proxy.port}/private-vhost" in detail, detail
    assert "guest:guest" not in detail  # the password stays redacted even here
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token-at-all"}):
        assert await broker_state(headers) == (503, "not connected")
