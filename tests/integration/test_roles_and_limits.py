"""Split roles share one namespace; prefetch and concurrency bound what runs at once."""

from __future__ import annotations

import dataclasses

from service import Role
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

ADMIN_TOKEN = "ops-token-0123456789"


async def test_ingress_and_worker_processes_split_the_pipeline(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    subscriptions = (subscription("split", ("split.*",), recorder),)
    ingress = await start_conveyor(subscriptions, role=Role.INGRESS)

    # Accepted before any worker exists: the event waits in its subscription queue.
    assert (await ingress.post({"type": "split.early", "id": "early"})).status == 202
    assert await namespace.depth(namespace.topology.queue("split")) == 1
    assert await namespace.depth(namespace.topology.unrouted) == 0
    assert recorder.events == []

    worker = await start_conveyor(subscriptions, role=Role.WORKER)
    assert (await worker.post({"type": "split.x"})).status == 404  # no ingest on a worker
    readiness = await (await worker.client.get("/readyz")).json()
    assert readiness["checks"]["subscription:split"] == "consuming"
    assert (await ingress.post({"type": "split.late", "id": "late"})).status == 202

    await recorder.wait_for(2)
    assert sorted(recorder.ids()) == ["early", "late"]


async def test_concurrency_bounds_the_handlers_running_at_once(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    recorder.release.clear()  # handlers start, then wait until released
    bounded = subscription("bounded", ("bounded.*",), recorder, prefetch=4, concurrency=2)
    # Without the dedup lookup, a delivery goes from arriving to a handler slot (or, were the
    # bound broken, into the handler) without giving up the event loop: once the process
    # holds all four, the third and fourth have met the bound.
    conveyor = await start_conveyor(
        (dataclasses.replace(bounded, deduplicate=False),), admin_tokens=(("ops", ADMIN_TOKEN),)
    )
    for n in range(10):
        assert (await conveyor.post({"type": "bounded.job", "id": f"j{n}"})).status == 202

    async def holding_the_prefetch() -> bool:
        response = await conveyor.client.get(
            "/v1/admin/subscriptions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        return bool((await response.json())["subscriptions"][0]["unacked_here"] == 4)

    await eventually(holding_the_prefetch, timeout=5, what="four deliveries held")
    assert recorder.started == 2
    # prefetch = 4: the broker holds back everything beyond the four delivered.
    assert await namespace.depth(namespace.topology.queue("bounded")) == 6

    recorder.release.set()
    await recorder.wait_for(10)
    assert sorted(recorder.ids()) == sorted(f"j{n}" for n in range(10))
