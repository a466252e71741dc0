"""Operating an ordered subscription: the admin listing, `conveyor subscriptions`, and replaying
its dead letters through the hash exchange to the key's partition."""

from __future__ import annotations

from typing import Any

from consumers.retry import RetryPolicy
from service import Role
from tests.conftest import Running, StartConveyor
from tests.integration.test_cli_client import TOKEN, conveyor_cli
from tests.support.namespace import Namespace
from tests.support.ordering import KeyedRecorder, ordered, publish_keys
from tests.support.waiting import eventually

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TOKENS = (("ops", TOKEN),)


async def admin(conveyor: Running, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await conveyor.client.request(method, f"/v1/admin{path}", json=body, headers=ADMIN)
    return response.status, await response.json(content_type=None)


async def partition_depths(namespace: Namespace, partitions: int) -> list[int]:
    topology = namespace.topology
    return [
        await namespace.depth(topology.partition_queue("ordered", index))
        for index in range(partitions)
    ]


async def test_the_listing_and_the_cli_show_each_partition_with_its_counts(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    # Retry delays are waited in process: an ordered subscription lists no tiers.
    sub = ordered("ordered", KeyedRecorder(), retry=RetryPolicy(1, (1.0,)), partitions=3)
    ingress = await start_conveyor((sub,), role=Role.INGRESS, admin_tokens=TOKENS)
    await publish_keys(ingress, keys=4, per_key=2)  # nobody consumes: 8 wait in the partitions

    status, body = await admin(ingress, "GET", "/subscriptions")
    code, text = await conveyor_cli(ingress, "subscriptions", "--token", TOKEN)

    assert status == 200
    (entry,) = body["subscriptions"]
    ns = namespace.name
    depths = await partition_depths(namespace, 3)
    assert sum(depths) == 8
    assert entry["ordering"] == {
        "by": "partitionkey",
        "partitions": 3,
        "queues": [
            {"name": f"{ns}.ordered.p{index}", "messages": depths[index], "consumers": 0}
            for index in range(3)
        ],
    }
    assert entry["queue"] == {"name": f"{ns}.ordered.partitions", "messages": 8, "consumers": 0}
    assert entry["retry"]["tiers"] == []
    assert code == 0
    summary, partitions = text.split("\n\n")
    assert summary.splitlines()[1].split() == [
        "ordered",
        "order.*",
        "8",
        "0",
        "0",
        "0",
        "tests:ordered",
    ]
    header, *rows = partitions.splitlines()
    assert header.split() == ["SUBSCRIPTION", "KEY", "PARTITION", "READY", "CONSUMERS"]
    assert [row.split() for row in rows] == [
        ["ordered", "partitionkey", f"{ns}.ordered.p{index}", str(depths[index]), "0"]
        for index in range(3)
    ]


async def test_a_replayed_dead_letter_goes_to_its_keys_partition_behind_what_waits_there(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = KeyedRecorder(max_sleep=0.002)
    recorder.fail_always.add(("k1", 2))
    sub = ordered("ordered", recorder, retry=RetryPolicy(1, ()), partitions=4)
    ingress = await start_conveyor((sub,), role=Role.INGRESS, admin_tokens=TOKENS)
    worker = await start_conveyor((sub,), role=Role.WORKER)
    await publish_keys(ingress, keys=3, per_key=4)

    async def first_round_done() -> bool:
        handled = sum(len(seen) for seen in recorder.handled.values())
        dead = await namespace.depth(namespace.topology.dead_letter_queue("ordered"))
        return handled == 11 and dead == 1

    await eventually(first_round_done, timeout=30, what="11 handled and k1-2 dead-lettered")
    assert recorder.handled["k1"] == [0, 1, 3]
    await worker.client.close()  # nobody consumes now: what is replayed stays where it lands

    recorder.fail_always.clear()
    await publish_keys(ingress, keys=2, per_key=2, first=4)  # k0 and k1: 4 and 5
    before = await partition_depths(namespace, 4)
    status, replayed = await admin(
        ingress, "POST", "/subscriptions/ordered/dead-letters/replay", {"all": True}
    )
    after = await partition_depths(namespace, 4)

    assert (status, replayed["replayed"]) == (200, 1)
    # Exactly one partition grew: the one the key hashes to.
    grown = [index for index in range(4) if after[index] != before[index]]
    assert len(grown) == 1
    assert after[grown[0]] == before[grown[0]] + 1
    assert await namespace.depth(namespace.topology.dead_letter_queue("ordered")) == 0

    await start_conveyor((sub,), role=Role.WORKER)

    async def all_handled() -> bool:
        return len(recorder.handled["k1"]) == 6 and len(recorder.handled["k0"]) == 6

    await eventually(all_handled, timeout=30, what="the replay and the later events handled")
    # The replay queued behind the later events of its key that already waited there.
    assert recorder.handled["k1"] == [0, 1, 3, 4, 5, 2]
    assert recorder.handled["k0"] == list(range(6))
    assert await partition_depths(namespace, 4) == [0, 0, 0, 0]
