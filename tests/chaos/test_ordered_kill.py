"""An ordered subscription across a SIGKILL: per key, publish order holds (`make chaos`)."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from producers import EventClient
from tests.support.namespace import Namespace
from tests.support.ordering import order_violations, repeats
from tests.support.processes import Process, handler_log
from tests.support.waiting import eventually

KEYS = 50
PER_KEY = 200
PARTITIONS = 8
CONFIG = f"""
[[subscriptions]]
name = "ordered"
events = ["order.*"]
handler = "tests.support.handlers:ordered"
prefetch = 50
concurrency = 16
ordered_by = "partitionkey"
partitions = {PARTITIONS}
[subscriptions.retry]
in_process = 1
delays = []
"""


def seen_per_key(log: Path) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for line in handler_log(log):
        key, _, index = line.partition(" ")
        if index.isdigit():  # a line cut short by the kill is no event
            seen[key].append(int(index))
    return seen


async def test_two_workers_one_killed_mid_run_keep_each_key_in_publish_order(
    namespace: Namespace,
    launch: Callable[..., Awaitable[Process]],
    tmp_path: Path,
    amqp_url: str,
) -> None:
    config = tmp_path / "ordered.toml"
    config.write_text(CONFIG)
    namespace.subscriptions["ordered"] = ()
    namespace.partitioned["ordered"] = PARTITIONS
    log = tmp_path / "ordered.log"
    # Two workers: single-active-consumer gives every partition to the first; the second
    # waits on each and takes over when the first dies.
    workers = [
        await launch(
            CONVEYOR_ROLE="worker",
            CONVEYOR_CONFIG=str(config),
            CONVEYOR_STORE_URL=f"sqlite:///{tmp_path}/store-{number}.db",
        )
        for number in range(2)
    ]

    async with EventClient(amqp_url, namespace=namespace.name) as client:

        async def one_key(key: str) -> None:
            for index in range(PER_KEY):  # one after another: this is the publish order
                await client.send(
                    "order.step",
                    {"index": index, "log": str(log), "max_sleep": 0.004},
                    id=f"{key}-{index}",
                    source="/ordered-chaos",
                    extensions={"partitionkey": key},
                )

        publishing = asyncio.gather(*(one_key(f"key-{number}") for number in range(KEYS)))

        async def part_way() -> bool:
            return sum(len(s) for s in seen_per_key(log).values()) >= KEYS * PER_KEY // 4

        await eventually(part_way, timeout=120, what="the first worker to be part way")
        workers[0].popen.send_signal(signal.SIGKILL)
        workers[0].popen.wait()
        await publishing

    async def all_seen() -> bool:
        seen = seen_per_key(log)
        return sum(len(set(indices)) for indices in seen.values()) >= KEYS * PER_KEY

    await eventually(all_seen, timeout=240, what="the second worker to handle the rest")
    seen = seen_per_key(log)
    assert order_violations(seen, PER_KEY) == []
    # Only the killed worker's unacked tail comes again: at most one repeat per key.
    assert repeats(seen) <= KEYS
    topology = namespace.topology
    for index in range(PARTITIONS):
        assert await namespace.depth(topology.partition_queue("ordered", index)) == 0
    assert await namespace.depth(topology.dead_letter_queue("ordered")) == 0
    assert workers[1].popen.poll() is None
