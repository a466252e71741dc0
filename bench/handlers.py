"""Handlers the benchmark's conveyor runs (`handler = "bench.handlers:..."`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from consumers import Event

# Where record_latency writes: set by bench/run.py for the conveyor process it starts.
LATENCY_FILE = "BENCH_LATENCY_FILE"
_latencies = Path(os.environ.get(LATENCY_FILE, os.devnull)).open("a", buffering=1)  # noqa: SIM115 - open for the life of the process


async def record_latency(event: Event) -> None:
    """Write one line: seconds from the load generator's send (`benchsent`) to this start."""
    started = time.time()
    _latencies.write(f"{started - float(event.extensions['benchsent']):.6f}\n")
