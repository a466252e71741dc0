"""Throughput of an ordered subscription with 8 partitions against 1, on the local broker.

    .venv/bin/python bench/ordered_partitions.py [amqp://guest:guest@127.0.0.1:5672/]

For each partition count: 4096 events over 64 keys are queued first, then one conveyor worker
(in this process) drains them; each handler call waits 5 ms, as a call to another service would.
Prints events/s from the first event handled to the last, and the ratio. Needs the
rabbitmq_consistent_hash_exchange plugin; everything it declares is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
import uuid
from dataclasses import replace

import aio_pika
import aiormq.exceptions
import structlog
from aiohttp.test_utils import TestClient, TestServer

from consumers import Event
from consumers.ordering import Ordering
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from producers import EventClient
from producers.topology import Topology
from service import Role, Settings, build_app
from service.broker.topology_plan import apply_topology

KEYS = 64
PER_KEY = 64
EVENTS = KEYS * PER_KEY
HANDLER_SECONDS = 0.005
PREFETCH = 32
CONCURRENCY = 32


async def events_per_second(amqp_url: str, partitions: int, folder: str) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace)
    handled: list[float] = []
    done = asyncio.Event()

    async def handler(_: Event) -> None:
        await asyncio.sleep(HANDLER_SECONDS)
        handled.append(time.perf_counter())
        if len(handled) >= EVENTS:
            done.set()

    subscription = Subscription(
        name="bench",
        events=("bench.*",),
        handler=handler,
        handler_path="bench:handler",
        prefetch=PREFETCH,
        concurrency=CONCURRENCY,
        retry=RetryPolicy(in_process=1, delays=()),
        ordering=Ordering("partitionkey", partitions),
    )
    await apply_topology((amqp_url,), topology, (subscription,))
    try:
        async with EventClient(amqp_url, namespace=namespace) as client:

            async def one_key(key: int) -> None:
                for index in range(PER_KEY):
                    await client.send(
                        "bench.step", {"i": index}, extensions={"partitionkey": f"k{key}"}
                    )

            await asyncio.gather(*(one_key(key) for key in range(KEYS)))
        settings = replace(
            Settings(),
            amqp_url=amqp_url,
            namespace=namespace,
            role=Role.WORKER,
            http_host="127.0.0.1",
            http_port=0,
            store_url=f"sqlite:///{folder}/{namespace}.db",
        )
        worker = TestClient(TestServer(build_app(settings, (subscription,))))
        await worker.start_server()
        try:
            await asyncio.wait_for(done.wait(), timeout=600)
        finally:
            await worker.close()
        return (len(handled) - 1) / (handled[-1] - handled[0])
    finally:
        await _delete(amqp_url, topology, partitions)


async def _delete(amqp_url: str, topology: Topology, partitions: int) -> None:
    queues = [topology.partition_queue("bench", index) for index in range(partitions)]
    queues += [topology.dead_letter_queue("bench"), topology.unrouted]
    exchanges = [
        topology.partition_exchange("bench"),
        topology.events_exchange,
        topology.unrouted,
        topology.dead_letter_exchange,
        topology.results_exchange,
    ]
    async with await aio_pika.connect(amqp_url) as connection:
        for name in queues:
            with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                await (await connection.channel()).queue_delete(name)
        for name in exchanges:
            with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                await (await connection.channel()).exchange_delete(name)


async def main(amqp_url: str) -> None:
    # The worker's own logs would drown the figures (and slow it down): warnings only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        f"ordered subscription: {EVENTS} events over {KEYS} keys, handler {HANDLER_SECONDS:g}s, "
        f"prefetch {PREFETCH} per partition, concurrency {CONCURRENCY}"
    )
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        for partitions in (1, 8):
            rates[partitions] = await events_per_second(amqp_url, partitions, folder)
            print(f"partitions = {partitions}  {rates[partitions]:8.0f} events/s")
    print(f"ratio 8/1     {rates[8] / rates[1]:8.2f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/"))
