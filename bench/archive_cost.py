"""What the archive costs ingest: events/s through POST /v1/events with CONVEYOR_ARCHIVE off and on.

    .venv/bin/python -m bench.archive_cost [--rounds 3] [--seconds 5]

Each round starts `conveyor serve` (ingress role, one subscription taking every event) without
and then with the archive (`CONVEYOR_ARCHIVE=7d`, the stream `{ns}.archive` bound to the events
exchange for every event), so both run side by side under the same broker and load. The ingress
publishes the same messages either way; the difference is the broker's: one more queue (an
append to the stream's log) to route each message to, and to confirm from. The load is
single-event POSTs on 64 connections, then batches of 100 on 8 (bench/load.py, a process of its
own). Everything runs on loopback and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.contenders import conveyor_ingest

MODES = {"off": {}, "archive": {"CONVEYOR_ARCHIVE": "7d"}}
SINGLE_CONNECTIONS = 64
BATCH_CONNECTIONS = 8
BATCH = 100


async def one_round(mode: str, seconds: float, folder: Path) -> tuple[float, float]:
    """(single-event POSTs per second, events per second in batches of 100)."""
    figures = []
    for connections, batch in ((SINGLE_CONNECTIONS, 0), (BATCH_CONNECTIONS, BATCH)):
        result = await conveyor_ingest(
            folder, connections=connections, seconds=seconds, batch=batch, env=MODES[mode]
        )
        figures.append(float(result["events_per_second"]))
    return figures[0], figures[1]


async def main(rounds: int, seconds: float) -> None:
    figures: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder:
        for number in range(rounds):
            for mode in MODES:
                figures[mode].append(await one_round(mode, seconds, Path(folder)))
                single, batched = figures[mode][-1]
                print(
                    f"round {number + 1} {mode:>8}: {single:7.0f} single/s {batched:7.0f} batch/s"
                )
    print(f"\nmedians over {rounds} rounds, {seconds:g} s of load each way:")
    base_single = statistics.median(f[0] for f in figures["off"])
    base_batched = statistics.median(f[1] for f in figures["off"])
    for mode in MODES:
        single = statistics.median(f[0] for f in figures[mode])
        batched = statistics.median(f[1] for f in figures[mode])
        print(
            f"{mode:>8}: {single:7.0f} single/s ({single / base_single:4.0%} of off)"
            f"  {batched:7.0f} batched/s ({batched / base_batched:4.0%})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.seconds))
