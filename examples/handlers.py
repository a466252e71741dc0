"""Example handlers: what a subscription's `handler = "examples.handlers:<name>"` points at."""

from __future__ import annotations

import pydantic
import structlog

from consumers import Event, PermanentError

_log = structlog.get_logger(component="examples")


class Signup(pydantic.BaseModel):
    email: str


async def send_welcome(event: Event[Signup]) -> None:
    """Pretend to send a welcome email to the user who signed up (data without an email is
    dead-lettered as invalid-data before this runs)."""
    _log.info("welcome email sent", to=event.data.email)


async def record_order(event: Event) -> None:
    """Pretend to store an order; an order without a total can never succeed, so say so."""
    if isinstance(event.data, dict) and "total" not in event.data:
        raise PermanentError("an order event needs data.total")  # straight to the DLQ
    _log.info("order recorded", subject=event.subject, data=event.data, attempt=event.attempt)
