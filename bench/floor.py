"""What the AMQP client leaves for conveyor's consumer: raw aiormq against FastStream and conveyor.

    .venv/bin/python -m bench.floor [--rounds 3] [--consume-events 15000]

Drains the same pre-filled queue (1 KB events, conveyor's quorum queue and prefetch) with, in
processes of their own, interleaved round after round with the starting contender rotating:

- `faststream`: the FastStream subscriber of `make bench` (the issue's yardstick);
- `aio-pika`: raw aio-pika, `make bench`'s consume ceiling;
- `aiormq`: aiormq without aio-pika, one ack per message: what the wire and the client's frame
  reader allow a Python consumer;
- `aiormq + announce`: the same, each delivery first publishing one small confirmed message
  (not routed anywhere) and waiting for its confirm before its ack, which is the wire work of
  conveyor's completion event;
- `conveyor`: the `worker` role with its defaults (SQLite store, deduplication, completions);
- `conveyor, no store`: the same without a store (`bench.serve --null-store`);
- `conveyor, completions off`: the defaults but `completions = false`, the subscription setting
  for when nobody listens on `{ns}.results`;
- `conveyor, PostgreSQL`: the defaults on a PostgreSQL store (a fresh schema, as a split or
  scaled-out deployment starts), so a slowdown of that store shows beside SQLite's figure.

Prints each contender's median events/s (min-max), the median of its per-round ratios to
FastStream, and its process's CPU time per event (median, min-max). docs/performance.md says
what the figures mean for issue 7's consume target.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import contenders
from bench.harness import postgres_store

Drain = Callable[[Path, int], Awaitable[dict[str, Any]]]


async def _on_postgres(folder: Path, count: int) -> dict[str, Any]:
    """conveyor's worker on a PostgreSQL store of its own (a fresh schema, dropped after)."""
    async with postgres_store() as url:
        return await contenders.conveyor_consume(folder, count, env={"CONVEYOR_STORE_URL": url})


CONTENDERS: dict[str, Drain] = {
    "faststream": contenders.faststream_consume,
    "aio-pika": contenders.ceiling_consume,
    "aiormq": contenders.wire_consume,
    "aiormq + announce": contenders.wire_consume_announcing,
    "conveyor": contenders.conveyor_consume,
    "conveyor, no store": lambda folder, count: contenders.conveyor_consume(
        folder, count, null_store=True
    ),
    "conveyor, completions off": lambda folder, count: contenders.conveyor_consume(
        folder, count, sink_settings="completions = false\n"
    ),
    "conveyor, PostgreSQL": _on_postgres,
}


async def measure(
    rounds: int, events: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each contender's events/s and CPU µs an event, round by round."""
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    cpu: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    names = list(CONTENDERS)
    with tempfile.TemporaryDirectory(prefix="conveyor-floor-") as folder:
        for number in range(rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                result = await CONTENDERS[name](Path(folder), events)
                rates[name].append(float(result["events_per_second"]))
                cpu[name].append(float(result["cpu_us_per_event"]))
                print(
                    f"round {number + 1} {name}: {rates[name][-1]:,.0f} events/s, "
                    f"{cpu[name][-1]:.0f} µs CPU an event",
                    flush=True,
                )
    return rates, cpu


def table(rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> str:
    yardstick = rates["faststream"]
    lines = [
        "| consumer | events/s | / FastStream (per round) | CPU µs an event |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in rates.items():
        ratios = [value / other for value, other in zip(values, yardstick, strict=True)]
        costs = cpu[name]
        lines.append(
            f"| {name} | {statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
            f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            f" | {statistics.median(costs):.0f} ({min(costs):.0f}-{max(costs):.0f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--consume-events", type=int, default=15_000)
    arguments = parser.parse_args()
    print(table(*asyncio.run(measure(arguments.rounds, arguments.consume_events))))


if __name__ == "__main__":
    main()
