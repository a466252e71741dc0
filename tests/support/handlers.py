"""Handlers for tests that run conveyor as a separate process (they are imported by path)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from consumers import Event


async def slow(event: Event) -> None:
    """Sleep `data.sleep` seconds, noting start and end in the file `data.log`."""
    assert isinstance(event.data, dict)
    log = Path(event.data["log"])
    with log.open("a") as file:
        file.write(f"start {event.id}\n")
    await asyncio.sleep(float(event.data["sleep"]))
    with log.open("a") as file:
        file.write(f"done {event.id}\n")


async def ordered(event: Event) -> None:
    """Note `<partitionkey> <data.index>` in the file `data.log` as it starts, then sleep a
    random time up to `data.max_sleep` seconds (for the ordered-subscription scenarios)."""
    assert isinstance(event.data, dict)
    with Path(event.data["log"]).open("a") as file:
        file.write(f"{event.extensions.get('partitionkey')} {event.data['index']}\n")
    # Random handler delays, as the ordering scenario asks; not cryptography.
    await asyncio.sleep(random.uniform(0, float(event.data["max_sleep"])))  # noqa: S311
