"""What every benchmark here shares: child processes, the namespace they work in, the events.

Each contender (conveyor, a peer, the raw aio-pika loop) runs in its own process, and the load
generator (bench/load.py) in another, so no two of them share an event loop. Each run gets a
namespace of its own (`bench-<hex>`) holding conveyor's topology for one subscription, `sink`;
`delete_namespace` removes every exchange and queue of it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq.exceptions
import asyncpg
import orjson

from consumers import builtin
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from consumers.topology import subscription_queue_arguments
from producers.delay import MAX_LEVELS
from producers.topology import Topology
from service.archive.stream import ArchiveSpec
from service.broker.topology_plan import apply_topology, plan_topology

__all__ = [
    "AMQP_URL",
    "EVENT_BYTES",
    "POSTGRES_URL",
    "PREFETCH",
    "PYTHON",
    "ROOT",
    "SINK",
    "TREE",
    "Child",
    "conveyor_config",
    "declare_namespace",
    "delete_namespace",
    "drain",
    "event_document",
    "free_port",
    "latency_figures",
    "new_namespace",
    "postgres_store",
    "run_to_json",
    "sink_queue_arguments",
    "start_child",
    "wait_ready",
]

TREE = "CONVEYOR_BENCH_TREE"  # in a child's env: the checkout it runs (default: this one)
PYTHON = "CONVEYOR_BENCH_PYTHON"  # in a child's env: the interpreter it runs on (default: ours)
AMQP_URL = os.environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parents[1]
SINK = "sink"
# conveyor's default prefetch for a subscription; every consumer here holds as many unacked.
PREFETCH = Subscription("x", ("#",), builtin.discard, "consumers.builtin:discard").prefetch
EVENT_BYTES = 1024
_DOCUMENT_OVERHEAD = len(
    orjson.dumps(
        {
            "specversion": "1.0",
            "id": "00000000-000000",
            "source": "/bench",
            "type": "bench.event",
            "datacontenttype": "application/json",
            "data": {"payload": ""},
        }
    )
)
_PADDING = "x" * (EVENT_BYTES - _DOCUMENT_OVERHEAD)


def new_namespace() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def event_document(event_id: str, **extensions: str) -> dict[str, Any]:
    """A structured-mode CloudEvent of about 1 KB (`EVENT_BYTES`) of JSON."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/bench",
        "type": "bench.event",
        "datacontenttype": "application/json",
        **extensions,
        "data": {"payload": _PADDING},
    }


def sink_subscription(handler_path: str = "consumers.builtin:discard") -> Subscription:
    """The one subscription of a bench namespace, with conveyor's defaults (prefetch, retries)."""
    return Subscription(SINK, ("#",), builtin.discard, handler_path, retry=RetryPolicy())


def conveyor_config(
    folder: Path, handler_path: str = "consumers.builtin:discard", sink_settings: str = ""
) -> Path:
    """A subscriptions file with `sink` taking every event, everything else left at defaults
    but for `sink_settings` (TOML lines of the subscription's table, such as
    "completions = false")."""
    path = folder / f"subscriptions-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(
        f'[[subscriptions]]\nname = "{SINK}"\nevents = ["#"]\nhandler = "{handler_path}"\n'
        + sink_settings
    )
    return path


def sink_queue_arguments(namespace: str) -> dict[str, Any]:
    """The arguments conveyor declares the `sink` queue with, for peers declaring it too."""
    return dict(subscription_queue_arguments(Topology(namespace), SINK))


async def declare_namespace(namespace: str) -> None:
    """conveyor's topology for `sink`, declared as a starting conveyor would (for the peers)."""
    await apply_topology((AMQP_URL,), Topology(namespace), (sink_subscription(),))


async def delete_namespace(namespace: str) -> None:
    """Delete every queue and exchange conveyor declares for `sink` in the namespace."""
    # The archive's stream too, declared when a run turns it on (bench.archive_cost).
    archive = ArchiveSpec(max_age=1.0, max_bytes=1, segment_bytes=1)
    # And the delay chain, at its most levels: conveyor runs with its defaults here.
    entities = await plan_topology(
        Topology(namespace), (sink_subscription(),), delay_levels=MAX_LEVELS, archive=archive
    )
    async with await aio_pika.connect(AMQP_URL) as connection:
        for kind in ("queue", "exchange"):
            for entity in entities:
                if entity["kind"] != kind:
                    continue
                # A failed delete closes its channel, so each gets a channel of its own.
                channel = await connection.channel()
                with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                    if kind == "queue":
                        await channel.queue_delete(entity["name"])
                    else:
                        await channel.exchange_delete(entity["name"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat times


@dataclass
class Child:
    """A contender's process; its output goes to a log file for when something goes wrong."""

    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_bytes(self) -> int:
        """Peak resident memory so far (VmHWM), from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc: not Linux?")

    def cpu_seconds(self) -> float:
        """CPU time the process used so far, user and system (its own, not its children's)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # The fields after the command name, which may hold spaces: utime and stime are 14, 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self, timeout: float = 30.0) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_child(
    arguments: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Child:
    """`python <arguments>` from the repository root (or `env[TREE]`, on `env[PYTHON]`), output
    to `log`."""
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            (env or {}).get(PYTHON, sys.executable),
            *arguments,
            # `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH: the
            # checkout a child runs is the folder it starts in (bench.ab runs two).
            cwd=(env or {}).get(TREE, ROOT),
            env={**os.environ, **(env or {})},
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
    return Child(process, log)


async def wait_ready(child: Child, url: str, timeout: float = 30.0) -> None:
    """Until `url` answers 200; fails with the child's last lines if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise RuntimeError(f"{url}: the process exited:\n{child.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as answer:
                    if answer.status == 200:  # noqa: PLR2004 - ready
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout:g}s:\n{child.tail()}")


async def run_to_json(arguments: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run `python <arguments>` to its end; its last line of output is a JSON object."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *arguments, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} exited {process.returncode}")
    result: dict[str, Any] = orjson.loads(output.splitlines()[-1])
    return result


@dataclass(frozen=True)
class Drained:
    rate: float  # messages per second
    # The consumer's CPU time per message over the same span: what it costs, apart from how
    # long it waited (on a shared machine no steadier than the rate: read both).
    cpu_seconds_per_message: float


async def drain(queue: str, expected: int, child: Child, timeout: float) -> Drained:
    """How fast the consumer took `queue` (filled with `expected`) down, polled from outside so
    every consumer is measured the same way: from the first message taken to the queue holding
    no ready message."""
    started: float | None = None
    cpu_at_start = 0.0
    remaining_at_start = expected
    deadline = time.monotonic() + timeout
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise RuntimeError(f"the consumer exited:\n{child.tail()}")
            declared = await channel.declare_queue(queue, passive=True)
            ready = declared.declaration_result.message_count or 0
            now = time.perf_counter()
            if started is None and ready < expected:
                started, remaining_at_start, cpu_at_start = now, ready, child.cpu_seconds()
            if started is not None and ready == 0:
                rate = remaining_at_start / (now - started) if now > started else 0.0
                cpu = (child.cpu_seconds() - cpu_at_start) / max(remaining_at_start, 1)
                return Drained(rate, cpu)
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{queue} not drained within {timeout:g}s:\n{child.tail()}")


@contextlib.asynccontextmanager
async def postgres_store() -> AsyncIterator[str]:
    """A CONVEYOR_STORE_URL on PostgreSQL in a schema of its own, dropped afterwards (the store
    several conveyor processes share)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def latency_figures(seconds: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and max in ms, the same way for every contender (inclusive quantiles)."""
    quantiles = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "handled": len(seconds),
        "latency_p50_ms": quantiles[49] * 1000,
        "latency_p99_ms": quantiles[98] * 1000,
        "latency_max_ms": max(seconds) * 1000,
    }
