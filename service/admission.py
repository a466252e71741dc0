"""Admission of ingest requests: a bound on how many are handled at once.

Each request in flight may hold a body of up to CONVEYOR_MAX_BODY_BYTES and a publish waiting
for its confirm. Past the bound, a request is refused with 503 before its body is read, so a
flood of clients costs at most max_concurrent_requests x max_body_bytes of bodies, and the
clients are told to come back instead of piling up in memory.
"""

from __future__ import annotations

__all__ = ["Admission", "OverloadedError"]


class OverloadedError(Exception):
    """Too many ingest requests at once; the client should retry after a moment."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"{limit} ingest requests are being handled already "
            "(CONVEYOR_MAX_CONCURRENT_REQUESTS); retry shortly"
        )


class Admission:
    """Counts ingest requests in flight; `admit` refuses one past the limit.

    The admission is its own context manager, not a generator-based one: it is entered once per
    ingest request, and a generator context manager costs several calls more (issue 7).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def admit(self) -> Admission:
        return self

    def __enter__(self) -> None:
        if self.in_flight >= self.limit:
            raise OverloadedError(self.limit)
        self.in_flight += 1

    def __exit__(self, *_exc_info: object) -> None:
        self.in_flight -= 1
