"""What the store costs ingest: events/s through POST /v1/events with no store, SQLite, PostgreSQL.

    .venv/bin/python bench/ingest_store_cost.py [--rounds 3] [--events 3000]

Each round starts `conveyor` (ingress role, one subscription taking every event) in a child
process with each store in turn, so the three run side by side under the same broker and load.
"No store" replaces the store with one that remembers nothing (no dedup, no status): the
baseline that shows what deduplication and status records cost. The load is single-event POSTs,
64 in flight, then batches of 100. Everything runs on loopback and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aio_pika
import aiohttp
import aiormq.exceptions
import asyncpg

AMQP_URL = os.environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_FLIGHT = 64
BATCH = 100
MODES = ("none", "sqlite", "postgresql")


class NullStore:
    """Remembers nothing: every claim is new, every write is dropped."""

    async def claim(
        self, scope: str, key: str, fingerprint: str, *, owner: str, lease: float
    ) -> Any:
        from service.store import Claim, ClaimOutcome  # noqa: PLC0415 - only the child needs it

        return Claim(ClaimOutcome.OWNER)

    async def release(self, scope: str, key: str, owner: str) -> None:
        return None

    async def write(self, writes: Sequence[Any]) -> None:
        return None

    async def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        return []

    async def purge_expired(self) -> int:
        return 0

    async def close(self) -> None:
        return None


def serve(mode: str, port: str, namespace: str, store_url: str) -> None:
    """The child: conveyor's own `serve`, with the store chosen by `mode`."""
    from unittest import mock  # noqa: PLC0415 - imported in the child only

    from consumers import RetryPolicy, Subscription, builtin  # noqa: PLC0415
    from service.cli import serve as run  # noqa: PLC0415
    from service.logs import configure_logging  # noqa: PLC0415
    from service.settings import LogFormat, Role, Settings  # noqa: PLC0415

    if mode == "none":

        async def open_null(_url: str) -> NullStore:
            return NullStore()

        mock.patch("service.app.open_store", open_null).start()  # the baseline's store
    settings = replace(
        Settings(),
        amqp_url=AMQP_URL,
        http_host="127.0.0.1",
        http_port=int(port),
        namespace=namespace,
        role=Role.INGRESS,
        log_format=LogFormat.JSON,
        log_level="warning",
        store_url=store_url,
    )
    configure_logging(settings)
    sink = Subscription(
        "sink", ("#",), builtin.discard, "consumers.builtin:discard", retry=RetryPolicy(1, ())
    )
    sys.exit(asyncio.run(run(settings, (sink,))))


async def load(port: int, events: int) -> tuple[float, float]:
    """(single-event POSTs per second, events per second in batches of 100)."""
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + "/readyz") as ready:
                    if ready.status == 200:  # noqa: PLR2004 - ready
                        break
            await asyncio.sleep(0.1)
        slots = asyncio.Semaphore(IN_FLIGHT)
        run = uuid.uuid4().hex[:8]

        async def post(document: Any) -> None:
            async with slots, session.post(base + "/v1/events", json=document) as response:
                if response.status != 202:  # noqa: PLR2004 - accepted
                    raise RuntimeError(f"{response.status}: {await response.text()}")

        started = time.perf_counter()
        await asyncio.gather(
            *(
                post({"type": "bench.single", "id": f"{run}-{i}", "source": "/b"})
                for i in range(events)
            )
        )
        single = events / (time.perf_counter() - started)
        batches = [
            [
                {
                    "specversion": "1.0",
                    "type": "bench.batch",
                    "id": f"{run}-b{b}-{i}",
                    "source": "/b",
                }
                for i in range(BATCH)
            ]
            for b in range(events // BATCH)
        ]
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for batch in batches:
                group.create_task(_post_batch(session, base, batch))
        batched = events // BATCH * BATCH / (time.perf_counter() - started)
    return single, batched


async def _post_batch(session: aiohttp.ClientSession, base: str, batch: list[Any]) -> None:
    headers = {"Content-Type": "application/cloudevents-batch+json"}
    async with session.post(base + "/v1/events", json=batch, headers=headers) as response:
        if response.status != 202:  # noqa: PLR2004 - accepted
            raise RuntimeError(f"{response.status}: {await response.text()}")


async def one_round(mode: str, events: int, workdir: str) -> tuple[float, float]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    port = 18000 + (os.getpid() + int(time.time())) % 1000
    schema = None
    store_url = f"sqlite:///{workdir}/{namespace}.db"
    if mode == "postgresql":
        schema = namespace.replace("-", "_")
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.close()
        store_url = f"{POSTGRES_URL}?search_path={schema}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", mode, str(port), namespace, store_url
    )
    try:
        return await load(port, events)
    finally:
        child.terminate()
        await asyncio.wait_for(child.wait(), timeout=60)
        await _delete_namespace(namespace)
        if schema is not None:
            admin = await asyncpg.connect(POSTGRES_URL)
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
            await admin.close()


async def _delete_namespace(namespace: str) -> None:
    async with await aio_pika.connect(AMQP_URL) as connection:
        for queue in (f"{namespace}.sink", f"{namespace}.sink.dlq", f"{namespace}.unrouted"):
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                await channel.queue_delete(queue)
        for exchange in ("events", "unrouted", "dlx", "results"):
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                await channel.exchange_delete(f"{namespace}.{exchange}")


async def main(rounds: int, events: int) -> None:
    figures: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as workdir:
        for number in range(rounds):
            for mode in MODES:
                figures[mode].append(await one_round(mode, events, workdir))
                single, batched = figures[mode][-1]
                print(
                    f"round {number + 1} {mode:>10}: {single:7.0f} single/s {batched:7.0f} batch/s"
                )
    print(f"\nmedians over {rounds} rounds, {events} events each way, {IN_FLIGHT} in flight:")
    base_single = statistics.median(f[0] for f in figures["none"])
    base_batched = statistics.median(f[1] for f in figures["none"])
    for mode in MODES:
        single = statistics.median(f[0] for f in figures[mode])
        batched = statistics.median(f[1] for f in figures[mode])
        print(
            f"{mode:>10}: {single:7.0f} single/s ({single / base_single:4.0%} of no store)"
            f"  {batched:7.0f} batched/s ({batched / base_batched:4.0%})"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(*sys.argv[2:6])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=3000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.events))
