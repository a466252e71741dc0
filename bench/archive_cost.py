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
from pathlib import Path

from bench.contenders import conveyor_ingest
from bench.ingest_store_cost import BATCH, BATCH_CONNECTIONS, SINGLE_CONNECTIONS, compare

MODES = {"off": {}, "archive": {"CONVEYOR_ARCHIVE": "7d"}}


async def one_round(mode: str, seconds: float, folder: Path) -> tuple[float, float]:
    """(single-event POSTs per second, events per second in batches of 100)."""
    figures = []
    for connections, batch in ((SINGLE_CONNECTIONS, 0), (BATCH_CONNECTIONS, BATCH)):
        result = await conveyor_ingest(
            folder, connections=connections, seconds=seconds, batch=batch, env=MODES[mode]
        )
        figures.append(float(result["events_per_second"]))
    return figures[0], figures[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    asyncio.run(
        compare(
            tuple(MODES), one_round, rounds=arguments.rounds, seconds=arguments.seconds, base="off"
        )
    )
