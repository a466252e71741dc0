"""Giving memory back after a burst of large requests.

CPython frees an object's memory to the C allocator, and glibc's malloc keeps freed memory in
its heaps for reuse instead of returning it to the system: after a burst of large batches the
process kept its peak resident size for good (docs/reliability.md). When the bytes the ingress
holds fall back to zero after a large peak, or the last request in flight ends after many were
refused (whose bodies aiohttp had partly read), `malloc_trim` returns the free pages, off the
event loop. Elsewhere than glibc there is nothing to call, and nothing happens.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

import structlog

__all__ = ["MemoryReturn", "glibc_trim"]

_log = structlog.get_logger(component="ingress")
# A burst smaller than this leaves too little free memory to be worth a trim.
TRIM_AFTER_BYTES = 16 * 1024 * 1024
# Refusals in a burst: each left what aiohttp read of its body behind.
TRIM_AFTER_REFUSALS = 64


def glibc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None when the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryReturn:
    """Told the ingest bytes in flight; trims once they are back to zero after a large peak."""

    def __init__(
        self, trim: Callable[[], object] | None, *, after_bytes: int = TRIM_AFTER_BYTES
    ) -> None:
        self._trim = trim
        self._after_bytes = after_bytes
        self._peak = 0  # the most bytes held since the last trim
        self._refused = 0  # requests refused since the last trim
        self._running: asyncio.Task[None] | None = None
        self.trims = 0

    def note(self, in_flight: int) -> None:
        """The bytes ingest requests hold changed."""
        self._peak = max(self._peak, in_flight)
        if not in_flight and self._peak >= self._after_bytes:
            self._start()

    def quiet(self, refused: int) -> None:
        """The last ingest request in flight ended; `refused` were refused since last told."""
        self._refused += refused
        if self._refused >= TRIM_AFTER_REFUSALS:
            self._start()

    def _start(self) -> None:
        if self._trim is None:
            return
        if self._running is not None and not self._running.done():
            return  # the next burst's end trims again
        self._peak = self._refused = 0
        self._running = asyncio.get_running_loop().create_task(self._run(self._trim))

    async def _run(self, trim: Callable[[], object]) -> None:
        await asyncio.to_thread(trim)
        self.trims += 1
        _log.debug("returned free memory to the system after a burst of ingest requests")
