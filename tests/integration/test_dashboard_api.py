"""What the dashboard reads besides the listing: the ring of recent rates, ingest totals, icon."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service import Settings, build_app
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HISTORY = "/v1/admin/dashboard/history"


class Clock:
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


async def admin_get(conveyor: Running, path: str) -> Any:
    response = await conveyor.client.get(path, headers=ADMIN)
    assert response.status == 200, await response.text()
    return await response.json()


def total(samples: list[dict[str, Any]], rate: Callable[[dict[str, Any]], float]) -> float:
    """What the rates add up to over the samples: a count."""
    return sum(rate(sample) * float(sample["seconds"]) for sample in samples)


async def test_the_history_adds_up_to_what_went_through_and_gives_newer_samples_on_asking(
    start_conveyor: StartConveyor,
) -> None:
    orders = Recorder()
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), orders),),
        admin_tokens=(("ops", TOKEN),),
        history_interval=0.1,
    )
    for event_id in ("o-1", "o-2"):
        await conveyor.post({"type": "order.placed", "id": event_id, "source": "/shop"})
    assert (await conveyor.post({"id": "no-source"})).status == 400
    await orders.wait_for(2)

    async def everything_counted() -> bool:
        samples = (await admin_get(conveyor, HISTORY))["samples"]
        handled = total(samples, lambda s: s["subscriptions"]["orders"]["handled_per_second"])
        accepted = total(samples, lambda s: s["ingest"]["accepted_per_second"])
        refused = total(
            samples, lambda s: s["ingest"]["refused_per_second"].get("invalid-event", 0)
        )
        return [round(handled, 1), round(accepted, 1), round(refused, 1)] == [2.0, 2.0, 1.0]

    await eventually(everything_counted, what="the history to count the events")
    history = await admin_get(conveyor, HISTORY)
    assert history["interval_seconds"] == 0.1
    assert history["span_seconds"] == 600.0
    newest = history["samples"][-1]["time"]

    async def newer_samples() -> bool:
        return bool((await admin_get(conveyor, f"{HISTORY}?since={newest}"))["samples"])

    await eventually(newer_samples, what="a sample after the newest one seen")
    newer = (await admin_get(conveyor, f"{HISTORY}?since={newest}"))["samples"]
    assert all(sample["time"] > newest for sample in newer)
    dashboard = await admin_get(conveyor, "/v1/admin/dashboard")
    assert dashboard["ingest"] == {"accepted": 2, "refused": {"invalid-event": 1}}


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("", {}, 401),
        ("", {"Authorization": "Bearer wrong-token-0123456789"}, 403),
        ("?since=yesterday", ADMIN, 400),
        ("?since=-1", ADMIN, 400),
        ("?since=nan", ADMIN, 400),
        ("?since=inf", ADMIN, 400),
        ("?since=0", ADMIN, 200),
    ],
)
async def test_the_history_needs_the_admin_token_and_since_a_time(
    start_conveyor: StartConveyor, query: str, headers: dict[str, str], status: int
) -> None:
    conveyor = await start_conveyor(admin_tokens=(("ops", TOKEN),))

    response = await conveyor.client.get(HISTORY + query, headers=headers)

    assert response.status == status
    if status != 200:
        assert response.content_type == "application/problem+json"


async def test_the_icon_needs_no_token_and_comes_with_the_dashboard(
    start_conveyor: StartConveyor,
) -> None:
    with_dashboard = await start_conveyor(admin_tokens=(("ops", TOKEN),))
    without = await start_conveyor()

    icon = await with_dashboard.client.get("/favicon.ico")
    missing = await without.client.get("/favicon.ico")

    assert icon.status == 200
    assert icon.content_type == "image/svg+xml"
    assert (await icon.read()).startswith(b"<svg")
    assert missing.status == 404


async def test_the_history_takes_its_times_from_the_clock_the_app_is_built_with(
    amqp_url: str, namespace: Namespace, tmp_path: Path
) -> None:
    settings = replace(
        Settings(),
        amqp_url=amqp_url,
        namespace=namespace.name,
        admin_tokens=(("ops", TOKEN),),
        store_url=f"sqlite:///{tmp_path}/clock.db",
    )
    clock = Clock(5000.0)
    app = build_app(settings, history_interval=0.05, clock=clock)
    async with TestClient(TestServer(app)) as client:

        async def a_sample() -> bool:
            clock.at += 60.0  # a minute between readings, whenever the sampler reads
            response = await client.get(HISTORY, headers=ADMIN)
            return bool((await response.json())["samples"])

        await eventually(a_sample, what="a sample")
        history = await (await client.get(HISTORY, headers=ADMIN)).json()

    assert history["time"] == clock.at
    for sample in history["samples"]:
        assert (sample["time"] - 5000.0) % 60.0 == 0.0
        assert sample["seconds"] % 60.0 == 0.0
        assert sample["seconds"] > 0.0
