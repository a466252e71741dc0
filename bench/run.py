"""`make bench`: conveyor against the raw aio-pika ceiling and its peers, in one run (issue 7).

    .venv/bin/python -m bench.run [--rounds 3] [--seconds 5] [--consume-events 50000]
                                  [--backlog 100000] [--workers 1,2] [--max-minutes 10]
                                  [--uvloop] [--latency-rate 1000]
                                  [--items single,batch,consume,latency,memory]

Every figure is a median over rounds, and the contenders of each comparison run interleaved
(round 1: A B C, round 2: B C A, ...), so a noisy neighbour hits them alike; the table shows
the spread (min-max) beside each median. A round runs every item once (latency and memory
only in the first), so the time cap drops whole rounds, never an item. Each run has a namespace
of its own, deleted afterwards. Prints a Markdown table and writes everything to
bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import contenders
from bench.harness import EVENT_BYTES, PREFETCH, ROOT, postgres_store
from bench.report import Samples, render_table

RESULTS = ROOT / "bench" / "results"
Measure = Callable[[Path], Awaitable[dict[str, Any]]]


class Run:
    """The samples so far, and the time left under the global cap."""

    def __init__(self, folder: Path, arguments: argparse.Namespace) -> None:
        self.folder = folder
        self.arguments = arguments
        self.samples: Samples = {}
        self.skipped: list[str] = []
        self.deadline = time.monotonic() + arguments.max_minutes * 60
        self.workers_supported = False

    async def compare(self, item: str, measures: dict[str, Measure], number: int) -> None:
        """Each contender once in round `number`, the order rotated from round to round."""
        if self.arguments.items and item not in self.arguments.items.split(","):
            return
        names = list(measures)
        for name in names[number % len(names) :] + names[: number % len(names)]:
            if time.monotonic() > self.deadline:
                self.skipped.append(f"{item} / {name} round {number + 1}: over the time cap")
                continue
            started = time.monotonic()
            try:
                result = await measures[name](self.folder)
            except Exception as error:  # noqa: BLE001 - one failed run is reported, not fatal
                self.skipped.append(f"{item} / {name} round {number + 1}: {error!r}"[:500])
                print(f"  {item} / {name}: FAILED {error!r}"[:300], flush=True)
                continue
            result["wall_seconds"] = time.monotonic() - started
            result["round"] = number + 1
            self.samples.setdefault(item, {}).setdefault(name, []).append(result)
            print(f"  {item} / {name} round {number + 1}: {_brief(result)}", flush=True)


def _on_uvloop(arguments: argparse.Namespace, measure: Measure) -> dict[str, Measure]:
    """conveyor on uvloop (CONVEYOR_EVENT_LOOP=uvloop) as one more contender, with --uvloop."""
    return {"conveyor-uvloop": measure} if arguments.uvloop else {}


async def _on_postgres(
    measure: Callable[[str], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """`measure` with a PostgreSQL store of its own: what several processes share (README)."""
    async with postgres_store() as url:
        return await measure(url)


def _brief(result: dict[str, Any]) -> str:
    keys = ("events_per_second", "latency_p99_ms", "peak_rss_bytes", "statuses")
    return ", ".join(
        f"{key}={result[key]:.0f}" if isinstance(result[key], float) else f"{key}={result[key]}"
        for key in keys
        if key in result
    )


async def bench(folder: Path, arguments: argparse.Namespace) -> Run:
    """Round after round of every item, so the time cap drops whole rounds, never an item."""
    run = Run(folder, arguments)
    run.workers_supported = await contenders.workers_supported()
    for number in range(arguments.rounds):
        print(f"round {number + 1}", flush=True)
        await one_round(run, number)
    return run


async def one_round(run: Run, number: int) -> None:
    arguments = run.arguments
    seconds, connections = arguments.seconds, arguments.connections
    print("2. single-event ingest", flush=True)
    await run.compare(
        "single",
        {
            "conveyor": lambda f: contenders.conveyor_ingest(
                f, connections=connections, seconds=seconds
            ),
            "conveyor-no-store": lambda f: contenders.conveyor_ingest(
                f, connections=connections, seconds=seconds, null_store=True
            ),
            "conveyor-postgres": lambda f: _on_postgres(
                lambda url: contenders.conveyor_ingest(
                    f, connections=connections, seconds=seconds, store_url=url
                )
            ),
            "faststream": lambda f: contenders.peer_ingest(
                f, "faststream-http", connections=connections, seconds=seconds
            ),
            "naive": lambda f: contenders.peer_ingest(
                f, "naive", connections=connections, seconds=seconds
            ),
        }
        | _on_uvloop(
            arguments,
            lambda f: contenders.conveyor_ingest(
                f, connections=connections, seconds=seconds, uvloop=True
            ),
        ),
        number,
    )
    workers = [int(n) for n in arguments.workers.split(",") if n.strip() and int(n) != 1]
    if workers and run.workers_supported:
        print("2b. single-event ingest, conveyor serve --workers N", flush=True)
        await run.compare(
            "single-workers",
            {
                f"conveyor-workers-{n}": lambda f, n=n: _on_postgres(  # type: ignore[misc]  # default binds the loop variable
                    lambda url: contenders.conveyor_ingest(
                        f, connections=connections, seconds=seconds, workers=n, store_url=url
                    )
                )
                for n in [1, *workers]
            },
            number,
        )
    elif workers and not number:
        run.skipped.append("--workers: `conveyor serve --workers N` does not exist yet")
    print("3. batch ingest (100 events a request)", flush=True)
    batch_connections = arguments.batch_connections
    await run.compare(
        "batch",
        {
            "conveyor": lambda f: contenders.conveyor_ingest(
                f, connections=batch_connections, seconds=seconds, batch=100
            ),
            "conveyor-no-store": lambda f: contenders.conveyor_ingest(
                f, connections=batch_connections, seconds=seconds, batch=100, null_store=True
            ),
        }
        | _on_uvloop(
            arguments,
            lambda f: contenders.conveyor_ingest(
                f, connections=batch_connections, seconds=seconds, batch=100, uvloop=True
            ),
        ),
        number,
    )
    events = arguments.consume_events
    print(f"1+4. publish ceiling (each fill) and consume ({events} events)", flush=True)
    await run.compare(
        "consume",
        {
            "ceiling": lambda f: contenders.ceiling_consume(f, events),
            "conveyor": lambda f: contenders.conveyor_consume(f, events),
            "conveyor-no-store": lambda f: contenders.conveyor_consume(f, events, null_store=True),
            "conveyor-postgres": lambda f: _on_postgres(
                lambda url: contenders.conveyor_consume(f, events, store_url=url)
            ),
            "faststream": lambda f: contenders.faststream_consume(f, events),
        }
        | _on_uvloop(arguments, lambda f: contenders.conveyor_consume(f, events, uvloop=True)),
        number,
    )
    if number:
        return  # latency and memory: once, in the first round
    rate = arguments.latency_rate
    if rate:
        print(f"5. latency at {rate:.0f} events/s")
        await run.compare(
            "latency",
            {
                "conveyor": lambda f: contenders.conveyor_latency(f, rate=rate, seconds=10),
                "conveyor-split": lambda f: contenders.conveyor_latency(
                    f, rate=rate, seconds=10, split=True
                ),
                "ceiling": lambda f: contenders.ceiling_latency(f, rate=rate, seconds=10),
            },
            0,
        )
    print("6. memory", flush=True)
    await run.compare(
        "memory",
        {
            "worker-backlog": lambda f: contenders.worker_memory(f, arguments.backlog),
            "ingress-1000-connections": lambda f: contenders.ingress_memory(
                f, connections=1000, seconds=seconds
            ),
        },
        0,
    )


def machine() -> dict[str, Any]:
    def command(*words: str) -> str:
        try:
            # A fixed command of our own (rabbitmqctl version), for the table's machine line.
            run = subprocess.run(words, capture_output=True, text=True, check=False)  # noqa: S603
        except OSError:
            return ""
        return run.stdout

    rabbit = command("rabbitmqctl", "version").strip() or "unknown"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "rabbitmq": rabbit,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="load per ingest run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch-connections", type=int, default=8)
    parser.add_argument("--consume-events", type=int, default=50_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--workers", default="1", help="e.g. 1,2: also run serve --workers N")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="global cap")
    parser.add_argument("--uvloop", action="store_true", help="also conveyor on uvloop")
    parser.add_argument(
        "--latency-rate", type=float, default=1000.0, help="events/s of the latency run (0: none)"
    )
    parser.add_argument(
        "--items", default="", help="only these, e.g. single,consume (also batch, latency, memory)"
    )
    arguments = parser.parse_args()
    started = datetime.now(UTC)
    host = machine()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder:
        run = asyncio.run(bench(Path(folder), arguments))
    settings = {
        "event_bytes": EVENT_BYTES,
        "prefetch": PREFETCH,
        **vars(arguments),
    }
    print()
    print(render_table(run.samples, settings, host))
    for line in run.skipped:
        print(f"- skipped: {line}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    document = {
        "started": started.isoformat(),
        "machine": host,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "settings": settings,
        "samples": run.samples,
        "skipped": run.skipped,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
