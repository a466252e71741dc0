"""Replaying archived events into one subscription, resuming after a cut, and backfills."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from consumers.ordering import Ordering
from consumers.subscription import Subscription
from service import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.support.proxy import FaultProxy
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ARCHIVE: dict[str, Any] = {
    "archive": 3600.0,
    "archive_read_idle": 1.0,
    "admin_tokens": (("ops", TOKEN),),
}


async def call(conveyor: Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await conveyor.client.request(method, path, headers=ADMIN, **kwargs)
    return response.status, await response.json(content_type=None)


async def replay(conveyor: Running, **body: Any) -> tuple[int, dict[str, Any]]:
    return await call(conveyor, "POST", "/v1/admin/archive/replay", json=body)


async def ended(conveyor: Running, replay_id: str, timeout: float = 30.0) -> dict[str, Any]:
    progress: dict[str, Any] = {}

    async def over() -> bool:
        nonlocal progress
        status, progress = await call(conveyor, "GET", f"/v1/admin/archive/replays/{replay_id}")
        # 404: a backfill that has not claimed its id yet.
        assert status in (200, 404), progress
        return status == 200 and progress["state"] != "running"

    await eventually(over, timeout=timeout, what=f"replay {replay_id} to end")
    return progress


async def post_all(conveyor: Running, ids: list[str], event_type: str = "order.placed") -> None:
    for event_id in ids:
        document = {"type": event_type, "id": event_id, "source": "/shop"}
        assert await conveyor.post_status(document) == 202


async def sentinel(conveyor: Running, *handlers: Recorder) -> None:
    """An event posted now, after everything under test, seen by each of `handlers`: whatever
    was queued for them before it has been handled by then."""
    event_id = f"sentinel-{uuid.uuid4().hex[:8]}"
    await post_all(conveyor, [event_id])
    for handler in handlers:

        async def seen(handler: Recorder = handler) -> bool:
            return event_id in handler.ids()

        await eventually(seen, what=f"{event_id} handled")


async def test_a_replay_runs_each_event_once_more_in_one_subscription_only(
    start_conveyor: StartConveyor,
) -> None:
    orders, audit = Recorder(), Recorder()
    since = time.time() - 1
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), orders), subscription("audit", ("order.*",), audit)),
        **ARCHIVE,
    )
    ids = [f"o-{index}" for index in range(5)]
    await post_all(conveyor, ids)
    await orders.wait_for(5)
    await audit.wait_for(5)

    status, started = await replay(
        conveyor,
        replay_id="fix-1",
        subscription="orders",
        since=since,
        until=time.time() + 1,
        rate=200,
    )
    assert status == 202, started
    progress = await ended(conveyor, "fix-1")
    assert progress["state"] == "done"
    assert progress["matched"] == progress["published"] == 5
    await sentinel(conveyor, orders, audit)

    assert Counter(orders.ids()) == Counter({**dict.fromkeys(ids, 2), orders.ids()[-1]: 1})
    assert sorted(audit.ids()[:-1]) == ids  # the other subscription saw nothing again
    _, event_status = await conveyor.status("/v1/events/o-3")
    replayed = event_status["subscriptions"]["orders@replay:fix-1"]
    assert replayed["state"] == "succeeded"
    assert event_status["subscriptions"]["orders"]["state"] == "succeeded"

    # The same replay id again does nothing: the answer is the first run's.
    status, again = await replay(
        conveyor,
        replay_id="fix-1",
        subscription="orders",
        since=since,
        until=progress["until"],
        rate=200,
    )
    assert status == 200
    assert again["state"] == "done"
    await sentinel(conveyor, orders)
    assert all(Counter(orders.ids())[event_id] == 2 for event_id in ids)


async def test_a_dry_run_counts_and_publishes_nothing(start_conveyor: StartConveyor) -> None:
    orders = Recorder()
    since = time.time() - 1
    conveyor = await start_conveyor((subscription("orders", ("order.*",), orders),), **ARCHIVE)
    await post_all(conveyor, ["a", "b"])
    await post_all(conveyor, ["c"], event_type="order.paid")
    await orders.wait_for(3)

    _, started = await replay(
        conveyor,
        subscription="orders",
        since=since,
        until=time.time() + 1,
        type="order.placed",
        dry_run=True,
    )
    progress = await ended(conveyor, started["replay_id"])

    assert (progress["state"], progress["matched"], progress["published"]) == ("done", 2, 0)
    await sentinel(conveyor, orders)
    assert sorted(orders.ids()[:-1]) == ["a", "b", "c"]


async def test_a_replay_cut_off_says_how_far_it_got_and_resumes_without_running_twice(
    start_conveyor: StartConveyor, proxy: FaultProxy
) -> None:
    orders = Recorder()
    since = time.time() - 1
    # The replay runs in an ingress behind the proxy; the handler in a worker beside it, so
    # the cut interrupts the replay and nothing else.
    await start_conveyor((subscription("orders", ("order.*",), orders),), role=Role.WORKER)
    ingress = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),),
        role=Role.INGRESS,
        amqp_url_override=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        **ARCHIVE,
    )
    ids = [f"c-{index}" for index in range(30)]
    await post_all(ingress, ids)
    await orders.wait_for(30)
    until = time.time() + 1

    await replay(
        ingress, replay_id="cut-1", subscription="orders", since=since, until=until, rate=20
    )

    async def some_published() -> bool:
        _, progress = await call(ingress, "GET", "/v1/admin/archive/replays/cut-1")
        return bool(progress["published"] >= 5)

    await eventually(some_published, what="part of the replay published")
    proxy.cut_all()
    cut = await ended(ingress, "cut-1")
    assert cut["state"] == "interrupted", cut
    assert 5 <= cut["published"] < 30
    await ingress.ready()
    status, resumed = await replay(
        ingress, replay_id="cut-1", subscription="orders", since=since, until=until, rate=20
    )
    assert status == 202, resumed
    done = await ended(ingress, "cut-1")

    assert done["state"] == "done", done
    # Published once each; the one whose confirm the cut took, if any, at most once more.
    assert done["matched"] == 30
    assert 30 <= done["published"] <= 30 + (cut["uncertain"] is not None)
    await sentinel(ingress, orders)
    runs = Counter(orders.ids())
    assert all(runs[event_id] == 2 for event_id in ids), runs


async def test_a_new_subscription_is_backfilled_once(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path}/shared.db"
    first = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), store_url=store_url, **ARCHIVE
    )
    await post_all(first, ["b-1", "b-2", "b-3"])
    await first.client.close()

    late = Recorder()
    with_late = (
        subscription("orders", ("order.*",), Recorder()),
        _backfilled(subscription("late", ("order.*",), late), 3600.0),
    )
    second = await start_conveyor(with_late, store_url=store_url, **ARCHIVE)
    await late.wait_for(3)
    progress = await ended(second, "backfill-late")
    assert (progress["state"], progress["published"]) == ("done", 3)
    await second.client.close()

    again = Recorder()
    third = await start_conveyor(
        (with_late[0], _backfilled(subscription("late", ("order.*",), again), 3600.0)),
        store_url=store_url,
        **ARCHIVE,
    )
    recorded = await ended(third, "backfill-late")  # learned from the store: it ran before
    assert recorded["state"] == "done"
    await sentinel(third, again)
    assert again.ids()[:-1] == []


def _backfilled(declared: Subscription, seconds: float) -> Subscription:
    return replace(declared, backfill=seconds)


async def test_an_ordered_subscription_gets_the_replay_in_order_through_its_partitions(
    start_conveyor: StartConveyor,
) -> None:
    seen = Recorder()
    plain = subscription("ordered", ("order.*",), seen, prefetch=16, concurrency=8)
    since = time.time() - 1
    conveyor = await start_conveyor((replace(plain, ordering=Ordering("subject", 4)),), **ARCHIVE)
    ids = [f"{key}-{step}" for step in range(3) for key in ("a", "b", "c")]
    for event_id in ids:
        document = {"type": "order.step", "id": event_id, "source": "/o", "subject": event_id[0]}
        assert await conveyor.post_status(document) == 202
    await seen.wait_for(9)

    _, started = await replay(
        conveyor, subscription="ordered", since=since, until=time.time() + 1, rate=500
    )
    progress = await ended(conveyor, started["replay_id"])
    await seen.wait_for(18)

    assert (progress["state"], progress["published"]) == ("done", 9)
    again = seen.ids()[9:]
    assert sorted(again) == sorted(ids)
    for key in "abc":  # each key's events in their order again
        assert [event_id for event_id in again if event_id[0] == key] == [
            f"{key}-{step}" for step in range(3)
        ]


async def test_a_cancelled_replay_stops_where_it_is_and_its_id_is_spent(
    start_conveyor: StartConveyor,
) -> None:
    orders = Recorder()
    since = time.time() - 1
    conveyor = await start_conveyor((subscription("orders", ("order.*",), orders),), **ARCHIVE)
    ids = [f"s-{index}" for index in range(10)]
    await post_all(conveyor, ids)
    await orders.wait_for(10)
    window = {"subscription": "orders", "since": since, "until": time.time() + 1, "rate": 2}
    await replay(conveyor, replay_id="slow-1", **window)

    async def one_published() -> bool:
        _, progress = await call(conveyor, "GET", "/v1/admin/archive/replays/slow-1")
        return bool(progress["published"] >= 1)

    await eventually(one_published, what="the slow replay's first event")
    status, cancelled = await call(conveyor, "DELETE", "/v1/admin/archive/replays/slow-1")
    again_status, again = await replay(conveyor, replay_id="slow-1", **window)
    await sentinel(conveyor, orders)

    assert (status, cancelled["state"]) == (200, "cancelled")
    assert 1 <= cancelled["published"] < 10
    assert (again_status, again["state"], again["published"]) == (
        200,
        "cancelled",
        cancelled["published"],
    )
    runs = Counter(orders.ids())
    # A publish the cancel cut short, its confirm unseen, may have arrived: it is named.
    twice = sum(runs[event_id] == 2 for event_id in ids)
    assert cancelled["published"] <= twice <= cancelled["published"] + bool(cancelled["uncertain"])


async def test_a_replay_id_is_spent_for_every_process_sharing_the_store(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    handled = Recorder()
    store_url = f"sqlite:///{tmp_path}/shared.db"
    orders = subscription("orders", ("order.*",), handled)
    first = await start_conveyor((orders,), store_url=store_url, **ARCHIVE)
    second = await start_conveyor((orders,), store_url=store_url, **ARCHIVE)
    since = time.time() - 1
    await post_all(first, ["x-1", "x-2", "x-3"])
    await handled.wait_for(3)
    window = {"subscription": "orders", "since": since, "until": time.time() + 1, "rate": 200}
    _, started = await replay(first, replay_id="shared-1", **window)
    done = await ended(first, "shared-1")

    status, elsewhere = await replay(second, replay_id="shared-1", **window)
    await sentinel(first, handled)

    assert done["published"] == 3
    assert status == 200
    assert (elsewhere["state"], elsewhere["published"]) == ("done", 3)
    runs = Counter(handled.ids())
    assert [runs[event_id] for event_id in ("x-1", "x-2", "x-3")] == [2, 2, 2]
    assert started["replay_id"] == "shared-1"
