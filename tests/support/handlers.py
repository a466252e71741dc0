"""Handlers for tests that run conveyor as a separate process (they are imported by path)."""

from __future__ import annotations

import asyncio
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
