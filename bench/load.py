"""The load generator, a process of its own: POSTs CloudEvents over keep-alive connections.

    python -m bench.load URL [--connections 64] [--seconds 5] [--warmup 1] [--batch 0]
                             [--rate 0]

Closed loop (the default): each of `--connections` clients posts, waits for the answer, posts
again; only answers that arrive within the `--seconds` after `--warmup` count. With `--rate R`
it is an open loop instead: R requests a second on schedule, each event carrying its send time
(`benchsent`, seconds since the epoch) for a handler to measure latency from. `--batch N` sends
N events per request (`application/cloudevents-batch+json`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import orjson

from bench.harness import event_document

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


class Load:
    def __init__(self, url: str, batch: int) -> None:
        self.url = url
        self.batch = batch
        self.run = uuid.uuid4().hex[:8]
        self.sequence = 0
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.events = 0
        self.window = (0.0, float("inf"))

    def body(self, **extensions: str) -> tuple[bytes, str]:
        self.sequence += 1
        if not self.batch:
            return orjson.dumps(event_document(f"{self.run}-{self.sequence}", **extensions)), (
                STRUCTURED
            )
        documents = [
            event_document(f"{self.run}-{self.sequence}-{index}", **extensions)
            for index in range(self.batch)
        ]
        return orjson.dumps(documents), BATCH

    async def post(self, session: aiohttp.ClientSession, **extensions: str) -> None:
        body, content_type = self.body(**extensions)
        started = time.perf_counter()
        try:
            async with session.post(
                self.url, data=body, headers={"Content-Type": content_type}
            ) as answer:
                await answer.read()
                status = answer.status
        except aiohttp.ClientError:
            status = 0  # the connection failed: counted apart from every HTTP status
        finished = time.perf_counter()
        if self.window[0] <= finished <= self.window[1]:
            self.statuses[status] += 1
            self.latencies.append(finished - started)
            if status == 202:  # noqa: PLR2004 - accepted
                self.events += max(self.batch, 1)


async def closed_loop(load: Load, connections: int, seconds: float, warmup: float) -> float:
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        load.window = (start + warmup, start + warmup + seconds)

        async def client() -> None:
            while time.perf_counter() < load.window[1]:
                await load.post(session)

        await asyncio.gather(*(client() for _ in range(connections)))
    return seconds


async def open_loop(load: Load, connections: int, seconds: float, rate: float) -> float:
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        load.window = (start, float("inf"))
        pending: set[asyncio.Task[None]] = set()
        for index in range(round(seconds * rate)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(load.post(session, benchsent=repr(time.time())))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        return time.perf_counter() - start


def _percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:  # noqa: PLR2004 - quantiles needs two
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=1000, method="inclusive")[round(fraction * 1000) - 1]


async def main(arguments: argparse.Namespace) -> dict[str, Any]:
    load = Load(arguments.url, arguments.batch)
    if arguments.rate:
        seconds = await open_loop(load, arguments.connections, arguments.seconds, arguments.rate)
    else:
        seconds = await closed_loop(
            load, arguments.connections, arguments.seconds, arguments.warmup
        )
    requests = sum(load.statuses.values())
    return {
        "requests": requests,
        "accepted_events": load.events,
        "seconds": seconds,
        "requests_per_second": requests / seconds,
        "events_per_second": load.events / seconds,
        "statuses": {str(status): count for status, count in sorted(load.statuses.items())},
        "p50_ms": _percentile(load.latencies, 0.5) * 1000,
        "p99_ms": _percentile(load.latencies, 0.99) * 1000,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    print(orjson.dumps(asyncio.run(main(parser.parse_args()))).decode())
