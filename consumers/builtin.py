"""Built-in handlers a subscription can name as `consumers.builtin:<name>`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from consumers.event import Event, Handler
from consumers.webhook import Webhook, WebhookOptions

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


@dataclass(frozen=True, slots=True)
class HandlerFactory:
    """A built-in that needs `[subscriptions.options]`: `build` turns them into a handler.

    `build(options, parse_duration, environ)` raises ValueError naming the bad option; `environ`
    is the environment the entry point read (for options that name a variable, never a value).
    """

    build: Callable[[Mapping[str, Any], Callable[[str], float], Mapping[str, str]], Handler]


def _build_webhook(
    options: Mapping[str, Any],
    parse_duration: Callable[[str], float],
    environ: Mapping[str, str],
) -> Handler:
    return Webhook(WebhookOptions.parse(options, parse_duration, environ))


# handler = "consumers.builtin:webhook" with [subscriptions.options] url = "https://..."
webhook = HandlerFactory(build=_build_webhook)
