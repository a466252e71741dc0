"""Built-in handlers a subscription can name as `consumers.builtin:<name>`."""

from __future__ import annotations

import structlog

from consumers.event import Event

__all__ = ["discard", "log_event"]

_log = structlog.get_logger(component="handlers")


async def log_event(event: Event) -> None:
    """Write the event to the log (its attributes; data only as its size)."""
    size = len(event.data) if isinstance(event.data, bytes) else None
    _log.info(
        "event received",
        source=event.source,
        subject=event.subject,
        time=event.time.isoformat() if event.time else None,
        datacontenttype=event.datacontenttype,
        extensions=dict(event.extensions),
        data_bytes=size,
    )


async def discard(event: Event) -> None:
    """Acknowledge and drop: for draining a subscription on purpose."""
