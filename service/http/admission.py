"""Admission of ingest requests: a bound on how many are handled at once, and on their bytes.

Each request in flight holds its body, the events parsed from it and their frames until
RabbitMQ confirms them. Two bounds keep that in memory limits: at most
max_concurrent_requests requests, refused with 503 before the body is read; and a byte budget
(max_ingest_bytes) that every request reserves from, as its body arrives (all at once when
Content-Length says how long it is) and for the events counted in it before it is parsed. A
reservation that does not fit waits briefly for others to finish, then the request is refused
with 503 overloaded, nothing of it published.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Self

__all__ = [
    "BODY_COPIES",
    "EVENT_BYTES",
    "Admission",
    "OverloadedError",
    "Ticket",
    "events_bound",
    "request_bytes_bound",
]

# What one body byte costs while its request is in flight: the chunks aiohttp reads, the body
# they are joined into, the parsed data, each event's data written again, its frames, the
# frame set written to the socket (measured with bench.memory_burst; see docs/reliability.md).
BODY_COPIES = 7
# What one event costs besides its data: its parsed attributes, the claim, the wire message
# and its frames, the status write (measured likewise).
EVENT_BYTES = 8 * 1024
# How long a reservation that does not fit waits for bytes to be released.
BUDGET_WAIT_SECONDS = 0.5
_BATCH_MEDIA = "application/cloudevents-batch+json"


class OverloadedError(Exception):
    """Too many ingest requests or bytes at once; the client should retry after a moment."""

    def __init__(self, limit: int, detail: str) -> None:
        self.limit = limit
        super().__init__(detail)


def events_bound(content_type: str | None, body: bytes, max_batch_events: int) -> int:
    """At most how many events `body` holds: one, or for a batch no more than its objects."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != _BATCH_MEDIA:
        return 1
    # Every event of a batch is a JSON object, so it opens with a '{' no escape can write.
    return max(1, min(body.count(b"{"), max_batch_events + 1))


def request_bytes_bound(max_body_bytes: int, max_batch_events: int) -> int:
    """The most one request may reserve: a body of the largest size, a batch of the most events."""
    return max_body_bytes * BODY_COPIES + (max_batch_events + 1) * EVENT_BYTES


class Admission:
    """Counts ingest requests and the bytes they reserved; refuses what does not fit."""

    def __init__(
        self,
        limit: int,
        byte_budget: int,
        *,
        on_bytes: Callable[[int], None] = lambda _bytes: None,
        on_quiet: Callable[[int], None] = lambda _refused: None,
        wait: float = BUDGET_WAIT_SECONDS,
    ) -> None:
        self.limit = limit
        self.byte_budget = byte_budget
        self.in_flight = 0
        self.bytes_in_flight = 0
        self.peak_bytes = 0  # the most held at once since the start
        self._on_bytes = on_bytes  # told the bytes in flight after every change
        # Told, when the last request in flight ends, how many were refused since the last time.
        self._on_quiet = on_quiet
        self._refused = 0
        self._wait = wait
        self._waiting: deque[asyncio.Future[None]] = deque()

    def admit(self) -> Ticket:
        """One request's admission: `with admission.admit() as ticket:`."""
        return Ticket(self)

    def _take(self, amount: int, *, holding: bool) -> bool:
        over = self.bytes_in_flight + amount > self.byte_budget
        if over or (self._waiting and not holding and amount > 0):
            return False
        self._add(amount)
        return True

    async def _reserve(self, amount: int, *, holding: bool) -> None:
        if self._take(amount, holding=holding):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        # First come, first served: a large request is not starved by a stream of small ones.
        # A request that holds bytes already goes first: it finishes and releases them, where
        # newcomers waiting for those very bytes would hold it up.
        waiter = loop.create_future()
        if holding:
            self._waiting.appendleft(waiter)
        else:
            self._waiting.append(waiter)
        try:
            while (
                self.bytes_in_flight + amount > self.byte_budget or self._waiting[0] is not waiter
            ):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self._refused += 1
                    raise OverloadedError(
                        self.byte_budget,
                        f"{self.bytes_in_flight} of {self.byte_budget} bytes are held by ingest "
                        "requests in flight (CONVEYOR_MAX_INGEST_BYTES); retry shortly",
                    )
                waiter = self._rearm(waiter, loop)
                await asyncio.wait((waiter,), timeout=remaining)
            self._add(amount)
        finally:
            self._waiting.remove(waiter)
            self._wake_first()

    def _rearm(
        self, waiter: asyncio.Future[None], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[None]:
        """A fresh future in `waiter`'s place in the queue (a woken one cannot wait again)."""
        if not waiter.done():
            return waiter
        fresh: asyncio.Future[None] = loop.create_future()
        self._waiting[self._waiting.index(waiter)] = fresh
        return fresh

    def _quiet(self) -> None:
        refused, self._refused = self._refused, 0
        self._on_quiet(refused)

    def _add(self, amount: int) -> None:
        self.bytes_in_flight += amount
        self.peak_bytes = max(self.peak_bytes, self.bytes_in_flight)
        self._on_bytes(self.bytes_in_flight)

    def _release(self, amount: int) -> None:
        if amount:
            self._add(-amount)
            self._wake_first()

    def _wake_first(self) -> None:
        if self._waiting and not self._waiting[0].done():
            self._waiting[0].set_result(None)


class Ticket:
    """One request's share of the admission: its slot, and the bytes it reserved."""

    __slots__ = ("_admission", "held")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.held = 0

    def __enter__(self) -> Self:
        admission = self._admission
        if admission.in_flight >= admission.limit:
            admission._refused += 1  # noqa: SLF001 - see __exit__
            raise OverloadedError(
                admission.limit,
                f"{admission.limit} ingest requests are being handled already "
                "(CONVEYOR_MAX_CONCURRENT_REQUESTS); retry shortly",
            )
        admission.in_flight += 1
        return self

    def __exit__(self, *_exc_info: object) -> None:
        admission = self._admission
        admission.in_flight -= 1
        admission._release(self.held)  # noqa: SLF001 - the ticket is the admission's own part
        if not admission.in_flight:
            admission._quiet()  # noqa: SLF001 - as above
        self.held = 0

    def take(self, amount: int) -> bool:
        """Hold `amount` more bytes if they fit now (no coroutine for the usual case)."""
        if self._admission._take(amount, holding=self.held > 0):  # noqa: SLF001 - see __exit__
            self.held += amount
            return True
        return False

    async def reserve(self, amount: int) -> None:
        """Hold `amount` more bytes until the request ends; OverloadedError if they do not
        become free within a moment."""
        await self._admission._reserve(amount, holding=self.held > 0)  # noqa: SLF001 - see __exit__
        self.held += amount
