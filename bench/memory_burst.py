"""Resident memory of a conveyor process before, during and after a burst of large batches.

    python -m bench.memory_burst [--requests 256] [--events 1000] [--event-bytes 1000]

Starts `conveyor serve` (role ingress, SQLite store in a temporary directory, a namespace of
its own, deleted afterwards) on a free loopback port, sends `--requests` batches of `--events`
events at once (each batch about 1 MiB with the defaults), and prints the process's resident
set size before the burst, its peak (VmHWM) and what it keeps a few seconds after, with the
answers by status. Settings come from the environment (CONVEYOR_*) as for `conveyor serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aio_pika
import aiohttp
import aiormq
import orjson

from producers.topology import Topology

_SETTLE_SECONDS = 5.0
_MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0]) * 1024
    return fields


def _batch(index: int, events: int, event_bytes: int) -> bytes:
    filler = "x" * event_bytes
    return orjson.dumps(
        [
            {
                "specversion": "1.0",
                "id": f"burst-{index}-{number}",
                "source": "/bench/memory",
                "type": "bench.memory",
                "data": {"filler": filler},
            }
            for number in range(events)
        ]
    )


async def _wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(300):
        try:
            async with session.get(base + "/readyz") as response:
                if response.status == 200:  # noqa: PLR2004 - ready
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("conveyor did not become ready")


async def _burst(arguments: argparse.Namespace, pid: int, base: str) -> None:
    shape = (arguments.events, arguments.event_bytes)
    bodies = [_batch(index, *shape) for index in range(arguments.requests)]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _wait_ready(session, base)
        before = _memory(pid)["VmRSS"]
        statuses: collections.Counter[int] = collections.Counter()

        async def post(body: bytes) -> None:
            async with session.post(
                base + "/v1/events",
                data=body,
                headers={"Content-Type": "application/cloudevents-batch+json"},
            ) as response:
                await response.read()
                statuses[response.status] += 1

        await asyncio.gather(*(post(body) for body in bodies))
        del bodies
        await asyncio.sleep(_SETTLE_SECONDS)
        after = _memory(pid)
        async with session.get(base + "/metrics") as response:
            gauges = [
                line
                for line in (await response.text()).splitlines()
                if line.startswith("conveyor_ingest_bytes")
            ]
    body_mib = arguments.events * (arguments.event_bytes + 100) / _MIB
    print(f"requests: {arguments.requests} batches of ~{body_mib:.2f} MiB, all at once")
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(f"RSS before: {before / _MIB:.0f} MiB")
    print(f"RSS peak:   {after['VmHWM'] / _MIB:.0f} MiB")
    print(f"RSS after:  {after['VmRSS'] / _MIB:.0f} MiB ({_SETTLE_SECONDS:g} s later)")
    for line in gauges:
        print(line)


async def _delete_namespace(amqp_url: str, namespace: str) -> None:
    topology = Topology(namespace)
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(topology.unrouted)
        for name in (
            topology.events_exchange,
            topology.unrouted,
            topology.dead_letter_exchange,
            topology.results_exchange,
        ):
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                await channel.exchange_delete(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--event-bytes", type=int, default=900)
    arguments = parser.parse_args()
    port = _free_port()
    namespace = f"bench-memory-{uuid.uuid4().hex[:8]}"
    amqp_url = os.environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with tempfile.TemporaryDirectory() as directory:
        environment = os.environ | {
            "CONVEYOR_HTTP_HOST": "127.0.0.1",
            "CONVEYOR_HTTP_PORT": str(port),
            "CONVEYOR_ROLE": "ingress",
            "CONVEYOR_NAMESPACE": namespace,
            "CONVEYOR_LOG_LEVEL": "warning",
            "CONVEYOR_STORE_URL": f"sqlite:///{directory}/conveyor.db",
            "CONVEYOR_AMQP_URL": amqp_url,
        }
        process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=environment)
        try:
            asyncio.run(_burst(arguments, process.pid, f"http://127.0.0.1:{port}"))
        finally:
            process.terminate()
            process.wait(timeout=60)
            asyncio.run(_delete_namespace(amqp_url, namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
