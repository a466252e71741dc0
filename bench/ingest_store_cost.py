"""What the store costs ingest: events/s through POST /v1/events with no store, SQLite, PostgreSQL.

    .venv/bin/python -m bench.ingest_store_cost [--rounds 3] [--seconds 5]

Each round starts `conveyor serve` (ingress role, one subscription taking every event) with each
store in turn, so the three run side by side under the same broker and load; the load generator
(bench/load.py) is a process of its own. "No store" replaces the store with one that remembers
nothing (no dedup, no status): the baseline that shows what deduplication and status records
cost. The load is single-event POSTs on 64 connections, then batches of 100 on 8. Everything
runs on loopback and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from bench.contenders import conveyor_ingest
from bench.harness import postgres_store

MODES = ("none", "sqlite", "postgresql")
SINGLE_CONNECTIONS = 64
BATCH_CONNECTIONS = 8
BATCH = 100


@asynccontextmanager
async def _store_url(mode: str) -> AsyncIterator[str | None]:
    """The CONVEYOR_STORE_URL for `mode` (None: conveyor's default, a SQLite file)."""
    if mode != "postgresql":
        yield None
        return
    async with postgres_store() as url:
        yield url


async def one_round(mode: str, seconds: float, folder: Path) -> tuple[float, float]:
    """(single-event POSTs per second, events per second in batches of 100)."""
    figures = []
    for connections, batch in ((SINGLE_CONNECTIONS, 0), (BATCH_CONNECTIONS, BATCH)):
        async with _store_url(mode) as store_url:
            result = await conveyor_ingest(
                folder,
                connections=connections,
                seconds=seconds,
                batch=batch,
                null_store=mode == "none",
                store_url=store_url,
            )
        figures.append(float(result["events_per_second"]))
    return figures[0], figures[1]


RoundOf = Callable[[str, float, Path], Awaitable[tuple[float, float]]]


async def compare(
    modes: Sequence[str], one_round: RoundOf, *, rounds: int, seconds: float, base: str
) -> None:
    """Each mode once a round, side by side; print each round, then the medians against `base`.
    Also what bench.archive_cost runs."""
    figures: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    width = max(len(mode) for mode in modes) + 2
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder:
        for number in range(rounds):
            for mode in modes:
                figures[mode].append(await one_round(mode, seconds, Path(folder)))
                single, batched = figures[mode][-1]
                print(
                    f"round {number + 1} {mode:>{width}}: {single:7.0f} single/s "
                    f"{batched:7.0f} batch/s"
                )
    print(f"\nmedians over {rounds} rounds, {seconds:g} s of load each way:")
    base_single = statistics.median(f[0] for f in figures[base])
    base_batched = statistics.median(f[1] for f in figures[base])
    for mode in modes:
        single = statistics.median(f[0] for f in figures[mode])
        batched = statistics.median(f[1] for f in figures[mode])
        print(
            f"{mode:>{width}}: {single:7.0f} single/s ({single / base_single:4.0%} of {base})"
            f"  {batched:7.0f} batched/s ({batched / base_batched:4.0%})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    asyncio.run(
        compare(MODES, one_round, rounds=arguments.rounds, seconds=arguments.seconds, base="none")
    )
