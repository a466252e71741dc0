"""/v1/admin: tokens, and what the subscriptions listing shows."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from consumers import PermanentError
from consumers.retry import RetryPolicy
from tests.conftest import Running, StartConveyor, subscription
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def admin_get(conveyor: Running, path: str, headers: dict[str, str]) -> tuple[int, object]:
    response = await conveyor.client.get(f"/v1/admin{path}", headers=headers)
    return response.status, await response.json(content_type=None)


async def test_the_admin_api_is_off_without_a_token(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor()

    status, _ = await admin_get(conveyor, "/subscriptions", ADMIN)

    assert status == 404


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic b3BzOnNlY3JldA=="}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 403, "forbidden"),
    ],
)
async def test_admin_needs_its_own_token(
    start_conveyor: StartConveyor, headers: dict[str, str], status: int, kind: str
) -> None:
    conveyor = await start_conveyor(
        admin_tokens=(("ops", TOKEN),), api_keys=frozenset({"ingest-key"})
    )
    ingest_key = {"Authorization": "Bearer ingest-key"}

    answered, body = await admin_get(conveyor, "/subscriptions", headers)
    with_ingest_key, _ = await admin_get(conveyor, "/subscriptions", ingest_key)

    assert answered == status
    assert isinstance(body, dict)
    assert body["type"] == f"urn:conveyor:problem:{kind}"
    assert with_ingest_key == 403  # an ingest key is not an admin token


async def test_subscriptions_show_their_queues_ladder_and_dead_letters(
    start_conveyor: StartConveyor,
) -> None:
    async def refuse(_event: object) -> None:
        raise PermanentError("no")

    retry = RetryPolicy(in_process=2, delays=(1.0, 60.0))
    conveyor = await start_conveyor(
        (
            subscription("orders", ("order.*",), Recorder(), retry=retry),
            subscription("refunds", ("refund.#",), refuse),
        ),
        admin_tokens=(("ops", TOKEN),),
    )
    assert (
        await conveyor.post({"type": "refund.asked", "id": "r-1", "source": "/s"})
    ).status == 202
    await conveyor.status("/v1/events/r-1", wait="10s")

    with capture_logs() as logs:
        status, body = await admin_get(conveyor, "/subscriptions", ADMIN)

    assert status == 200
    audit = [line for line in logs if line["event"] == "admin operation"]
    assert audit == [
        {
            "event": "admin operation",
            "admin": "ops",
            "operation": "subscriptions.list",
            "path": "/v1/admin/subscriptions",
            "component": "admin",
            "log_level": "info",
        }
    ]
    assert TOKEN not in str(logs)
    assert isinstance(body, dict)
    orders, refunds = body["subscriptions"]
    prefix = conveyor.settings.namespace
    assert orders["name"] == "orders"
    assert orders["events"] == ["order.*"]
    assert orders["queue"] == {"name": f"{prefix}.orders", "messages": 0, "consumers": 1}
    assert orders["retry"] == {
        "in_process": 2,
        "tiers": [
            {"delay": "1s", "queue": f"{prefix}.orders.retry.1s", "messages": 0},
            {"delay": "1m", "queue": f"{prefix}.orders.retry.1m", "messages": 0},
        ],
    }
    assert orders["dead_letter"] == {"queue": f"{prefix}.orders.dlq", "messages": 0}
    assert refunds["dead_letter"]["messages"] == 1
    assert refunds["handled_here"] == {"dead-lettered": 1}

    async def rated() -> bool:
        _, again = await admin_get(conveyor, "/subscriptions", ADMIN)
        assert isinstance(again, dict)
        rates = again["subscriptions"][0]["rates"]
        return rates is not None and rates["over_seconds"] > 0

    # Two polls of the queue (every 0.2 s in tests) give the first rates.
    await eventually(rated, what="rates from two queue polls")


async def test_unacked_counts_what_this_process_holds(start_conveyor: StartConveyor) -> None:
    stuck = Recorder()
    stuck.release.clear()  # every handler waits
    conveyor = await start_conveyor(
        (subscription("slow", ("slow.*",), stuck, prefetch=8, concurrency=4),),
        admin_tokens=(("ops", TOKEN),),
    )
    for index in range(6):
        assert (await conveyor.post({"type": "slow.job", "id": f"s-{index}"})).status == 202

    async def holding_six() -> bool:
        _, body = await admin_get(conveyor, "/subscriptions", ADMIN)
        assert isinstance(body, dict)
        return bool(body["subscriptions"][0]["unacked_here"] == 6)

    await eventually(holding_six, what="six deliveries held: four running, two waiting")
    assert stuck.started == 4  # the concurrency bound: the other two wait for a slot
    stuck.release.set()

    async def none_held() -> bool:
        _, body = await admin_get(conveyor, "/subscriptions", ADMIN)
        assert isinstance(body, dict)
        return bool(body["subscriptions"][0]["unacked_here"] == 0)

    await eventually(none_held, what="every delivery settled")
