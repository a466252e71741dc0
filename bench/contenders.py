"""One measurement each: start the contender in a fresh namespace, load it, take the figure,
stop it and delete the namespace (whatever happened)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from bench.handlers import LATENCY_FILE
from bench.harness import (
    AMQP_URL,
    SINK,
    Child,
    conveyor_config,
    declare_namespace,
    delete_namespace,
    drain,
    free_port,
    latency_figures,
    new_namespace,
    postgres_store,
    run_to_json,
    start_child,
    wait_ready,
)
from producers.topology import Topology

__all__ = [
    "ceiling_consume",
    "ceiling_latency",
    "conveyor_consume",
    "conveyor_ingest",
    "conveyor_latency",
    "faststream_consume",
    "fill",
    "ingress_memory",
    "peer_ingest",
    "start_conveyor",
    "worker_memory",
    "workers_supported",
]

LOAD_SLACK_SECONDS = 60.0
DRAIN_TIMEOUT_SECONDS = 300.0


async def start_conveyor(
    folder: Path,
    namespace: str,
    role: str,
    *,
    null_store: bool = False,
    handler: str = "consumers.builtin:discard",
    workers: int = 1,
    env: dict[str, str] | None = None,
    store_url: str | None = None,
    uvloop: bool = False,
    sink_settings: str = "",
) -> tuple[Child, str]:
    """conveyor with its defaults but for where it listens, its namespace and a SQLite file of
    its own (or `store_url`); the base URL it answers on."""
    port = free_port()
    settings = {
        "CONVEYOR_AMQP_URL": AMQP_URL,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_HTTP_HOST": "127.0.0.1",
        "CONVEYOR_HTTP_PORT": str(port),
        "CONVEYOR_ROLE": role,
        "CONVEYOR_CONFIG": str(conveyor_config(folder, handler, sink_settings)),
        "CONVEYOR_STORE_URL": store_url or f"sqlite:///{folder}/{namespace}.db",
        **(env or {}),
    }
    if uvloop:
        settings["CONVEYOR_EVENT_LOOP"] = "uvloop"
    arguments = ["-m", "bench.serve", *(["--null-store"] if null_store else []), "serve"]
    if workers != 1:
        arguments += ["--workers", str(workers)]
    child = await start_child(arguments, folder / f"{namespace}-{role}.log", settings)
    return child, f"http://127.0.0.1:{port}"


async def workers_supported() -> bool:
    """Whether this conveyor has `serve --workers N` (SO_REUSEPORT processes) yet."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", "--help", stdout=asyncio.subprocess.PIPE
    )
    output, _ = await process.communicate()
    return b"--workers" in output


async def _load(base: str, *options: str, timeout: float) -> dict[str, Any]:
    return await run_to_json(["-m", "bench.load", f"{base}/v1/events", *options], timeout)


def _load_options(connections: int, seconds: float, batch: int = 0) -> list[str]:
    return ["--connections", str(connections), "--seconds", str(seconds), "--batch", str(batch)]


async def conveyor_ingest(
    folder: Path,
    *,
    connections: int,
    seconds: float,
    batch: int = 0,
    null_store: bool = False,
    workers: int = 1,
    store_url: str | None = None,
    uvloop: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    namespace = new_namespace()
    try:
        child, base = await start_conveyor(
            folder,
            namespace,
            "ingress",
            null_store=null_store,
            workers=workers,
            store_url=store_url,
            uvloop=uvloop,
            env=env,
        )
        try:
            await wait_ready(child, f"{base}/readyz")
            options = _load_options(connections, seconds, batch)
            cpu_at_start = child.cpu_seconds()
            result = await _load(base, *options, timeout=seconds + LOAD_SLACK_SECONDS)
            # The conveyor process's CPU time an accepted event: steadier than the rate on a
            # shared machine (it leaves out the time spent waiting for a core).
            cpu = child.cpu_seconds() - cpu_at_start
            result["cpu_us_per_event"] = cpu / max(result["accepted_events"], 1) * 1e6
            return result
        finally:
            await child.stop()
    finally:
        await delete_namespace(namespace)


async def peer_ingest(
    folder: Path, peer: str, *, connections: int, seconds: float
) -> dict[str, Any]:
    """`peer` is `naive` or `faststream-http` (bench.peers)."""
    namespace = new_namespace()
    try:
        await declare_namespace(namespace)
        port = free_port()
        child = await start_child(
            ["-m", "bench.peers", peer, str(port), namespace], folder / f"{namespace}-{peer}.log"
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(child, f"{base}/readyz")
            options = _load_options(connections, seconds)
            return await _load(base, *options, timeout=seconds + LOAD_SLACK_SECONDS)
        finally:
            await child.stop()
    finally:
        await delete_namespace(namespace)


async def fill(namespace: str, count: int) -> dict[str, Any]:
    """Publish `count` events to the namespace, raw aio-pika: a sample of the publish ceiling."""
    return await run_to_json(
        ["-m", "bench.peers", "ceiling-publish", namespace, str(count)],
        timeout=DRAIN_TIMEOUT_SECONDS,
    )


async def _consume(
    folder: Path,
    count: int,
    start: list[str] | None,
    *,
    null_store: bool = False,
    uvloop: bool = False,
    env: dict[str, str] | None = None,
    sink_settings: str = "",
    store_url: str | None = None,
) -> dict[str, Any]:
    """Fill a fresh namespace's `sink` with `count` events, then time the consumer draining it.
    `start` is the peer's command (bench.peers), None for conveyor in the worker role."""
    namespace = new_namespace()
    try:
        await declare_namespace(namespace)
        filled = await fill(namespace, count)
        if start is None:
            child, _ = await start_conveyor(
                folder,
                namespace,
                "worker",
                null_store=null_store,
                uvloop=uvloop,
                env=env,
                sink_settings=sink_settings,
                store_url=store_url,
            )
        else:
            log = folder / f"{namespace}-{start[0]}.log"
            child = await start_child(["-m", "bench.peers", *start, namespace], log)
        try:
            queue = Topology(namespace).queue(SINK)
            drained = await drain(queue, count, child, DRAIN_TIMEOUT_SECONDS)
            return {
                "events": count,
                "events_per_second": drained.rate,
                "cpu_us_per_event": drained.cpu_seconds_per_message * 1e6,
                "peak_rss_bytes": child.peak_rss_bytes(),
                "fill_messages_per_second": filled["messages_per_second"],
            }
        finally:
            await child.stop()
    finally:
        await delete_namespace(namespace)


async def ceiling_consume(folder: Path, count: int) -> dict[str, Any]:
    return await _consume(folder, count, ["ceiling-consume"])


async def faststream_consume(folder: Path, count: int) -> dict[str, Any]:
    return await _consume(folder, count, ["faststream-consume"])


async def wire_consume(folder: Path, count: int) -> dict[str, Any]:
    return await _consume(folder, count, ["wire-consume"])


async def wire_consume_announcing(folder: Path, count: int) -> dict[str, Any]:
    return await _consume(folder, count, ["wire-consume-announce"])


async def conveyor_consume(
    folder: Path,
    count: int,
    *,
    null_store: bool = False,
    uvloop: bool = False,
    env: dict[str, str] | None = None,
    sink_settings: str = "",
    store_url: str | None = None,
) -> dict[str, Any]:
    return await _consume(
        folder,
        count,
        None,
        null_store=null_store,
        uvloop=uvloop,
        env=env,
        sink_settings=sink_settings,
        store_url=store_url,
    )


async def worker_memory(folder: Path, backlog: int) -> dict[str, Any]:
    """Peak RSS of conveyor's worker draining a backlog of `backlog` events."""
    return await conveyor_consume(folder, backlog)


async def ingress_memory(folder: Path, *, connections: int, seconds: float) -> dict[str, Any]:
    """Peak RSS of conveyor's ingress under `connections` concurrent keep-alive clients."""
    namespace = new_namespace()
    try:
        child, base = await start_conveyor(folder, namespace, "ingress")
        try:
            await wait_ready(child, f"{base}/readyz")
            options = _load_options(connections, seconds)
            result = await _load(base, *options, timeout=seconds + LOAD_SLACK_SECONDS)
            return {**result, "peak_rss_bytes": child.peak_rss_bytes()}
        finally:
            await child.stop()
    finally:
        await delete_namespace(namespace)


async def conveyor_latency(
    folder: Path, *, rate: float, seconds: float, split: bool = False
) -> dict[str, Any]:
    """Ingest to handler start at `rate` events/s: one conveyor in the `all` role, or (`split`)
    an `ingress` and a `worker` process sharing a PostgreSQL store, as a deployment would."""
    namespace = new_namespace()
    latencies = folder / f"{namespace}-latencies.txt"
    env = {LATENCY_FILE: str(latencies)}
    handler = "bench.handlers:record_latency"
    try:
        async with contextlib.AsyncExitStack() as running:
            if split:
                store_url = await running.enter_async_context(postgres_store())
                worker, worker_base = await start_conveyor(
                    folder, namespace, "worker", handler=handler, env=env, store_url=store_url
                )
                running.push_async_callback(worker.stop)
                await wait_ready(worker, f"{worker_base}/readyz")
                child, base = await start_conveyor(
                    folder, namespace, "ingress", handler=handler, store_url=store_url
                )
            else:
                child, base = await start_conveyor(
                    folder, namespace, "all", handler=handler, env=env
                )
            running.push_async_callback(child.stop)
            await wait_ready(child, f"{base}/readyz")
            result = await _load(
                base,
                "--rate",
                f"{rate:.1f}",
                "--seconds",
                str(seconds),
                timeout=seconds + LOAD_SLACK_SECONDS,
            )
            seen = await _handled(latencies, result["accepted_events"])
    finally:
        await delete_namespace(namespace)
    return {**result, "rate": rate, **latency_figures(seen)}


async def ceiling_latency(folder: Path, *, rate: float, seconds: float) -> dict[str, Any]:
    """Raw aio-pika publish to consume start at `rate`: the floor under conveyor's figure."""
    del folder  # the peer process needs no files
    namespace = new_namespace()
    try:
        await declare_namespace(namespace)
        return await run_to_json(
            ["-m", "bench.peers", "ceiling-latency", namespace, f"{rate:.1f}", str(seconds)],
            timeout=seconds + LOAD_SLACK_SECONDS,
        )
    finally:
        await delete_namespace(namespace)


async def _handled(latencies: Path, expected: int, timeout: float = 30.0) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        lines = await asyncio.to_thread(_lines, latencies)
        if len(lines) >= expected or time.monotonic() > deadline:
            return [float(line) for line in lines]
        await asyncio.sleep(0.2)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []
