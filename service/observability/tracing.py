"""Tracing: spans for ingest, publish and handling, joined through the AMQP `traceparent`.

Off by default: the incoming W3C `traceparent` is then passed through to the AMQP message as it
came. With CONVEYOR_OTEL=1 (and the `otel` extra installed) `otel_spans` records spans and
exports them over OTLP; the message then carries the publish span's context, so the consumer's
span joins the same trace.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from aiohttp import web

from consumers.observe import NO_HANDLER_TRACER, MarkFailed
from producers import OutgoingEvent
from service.settings import SettingError, Settings

__all__ = ["NoTracing", "Tracing", "build_tracing"]


class Tracing(Protocol):
    def ingest(self, request: web.Request) -> contextlib.AbstractContextManager[None]: ...

    def publish(
        self, event: OutgoingEvent, traceparent: str | None
    ) -> contextlib.AbstractContextManager[str | None]:
        """Around one publish; yields the `traceparent` the AMQP message carries."""
        ...

    def handling(
        self, subscription: str, event_id: str, event_type: str, traceparent: str | None
    ) -> contextlib.AbstractContextManager[MarkFailed]: ...

    def shutdown(self) -> None:
        """Flush what is not exported yet."""
        ...


class NoTracing:
    def ingest(self, request: web.Request) -> contextlib.AbstractContextManager[None]:  # noqa: ARG002 - tracing is off
        return contextlib.nullcontext()

    def publish(
        self,
        event: OutgoingEvent,  # noqa: ARG002 - tracing is off
        traceparent: str | None,
    ) -> contextlib.AbstractContextManager[str | None]:
        # Passed through as the client sent it; nullcontext, not a generator context manager,
        # as this runs once per event published.
        return contextlib.nullcontext(traceparent)

    def handling(
        self, subscription: str, event_id: str, event_type: str, traceparent: str | None
    ) -> contextlib.AbstractContextManager[MarkFailed]:
        return NO_HANDLER_TRACER.handling(subscription, event_id, event_type, traceparent)

    def shutdown(self) -> None:
        return None


def build_tracing(settings: Settings) -> Tracing:
    if not settings.otel:
        return NoTracing()
    try:
        from service.observability.otel_spans import otlp_tracing  # noqa: PLC0415 - the optional extra, only when on
    except ImportError:
        raise SettingError(
            "CONVEYOR_OTEL", "the otel extra installed: pip install 'conveyor[otel]'"
        ) from None
    return otlp_tracing(settings)
