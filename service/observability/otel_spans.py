"""OpenTelemetry spans (the `otel` extra): one tracer provider per app, no global state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from producers import OutgoingEvent
from service.settings import Settings

__all__ = ["OtelTracing", "otlp_tracing"]

_PROPAGATOR = TraceContextTextMapPropagator()


def _parent(traceparent: str | None) -> Context:
    return _PROPAGATOR.extract({"traceparent": traceparent} if traceparent else {})


class OtelTracing:
    def __init__(self, provider: TracerProvider, *, namespace: str) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("conveyor")
        self._namespace = namespace

    @contextlib.contextmanager
    def ingest(self, request: web.Request) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            f"{request.method} {request.path}",
            context=_parent(request.headers.get("traceparent")),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        ):
            yield

    @contextlib.contextmanager
    def publish(
        self,
        event: OutgoingEvent,
        traceparent: str | None,  # noqa: ARG002 - the ingest span already joined the client's trace
    ) -> Iterator[str | None]:
        with self._tracer.start_as_current_span(
            f"publish {event.type}",
            kind=SpanKind.PRODUCER,
            attributes=self._messaging(event.id, event.type),
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            yield carrier.get("traceparent")

    @contextlib.contextmanager
    def handling(
        self, subscription: str, event_id: str, event_type: str, traceparent: str | None
    ) -> Iterator[Callable[[str, str], None]]:
        attributes = self._messaging(event_id, event_type)
        attributes["messaging.consumer.group.name"] = subscription
        with self._tracer.start_as_current_span(
            f"process {event_type}",
            context=_parent(traceparent),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:

            def mark_failed(error_class: str, message: str) -> None:
                # The handler's exceptions end in a retry or a dead letter, not in the span.
                span.set_attribute("error.type", error_class)
                span.set_status(Status(StatusCode.ERROR, f"{error_class}: {message}"))

            yield mark_failed

    def _messaging(self, event_id: str, event_type: str) -> dict[str, str]:
        return {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": f"{self._namespace}.events",
            "messaging.rabbitmq.destination.routing_key": event_type,
            "messaging.message.id": event_id,
        }

    def shutdown(self) -> None:
        self._provider.shutdown()  # blocking (a final export): the app runs it in a thread


def otlp_tracing(settings: Settings) -> OtelTracing:
    """Spans exported over OTLP/HTTP; OTEL_EXPORTER_OTLP_* variables say where (SDK defaults)."""
    resource = Resource.create(
        {"service.name": "conveyor", "service.namespace": settings.namespace}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OtelTracing(provider, namespace=settings.namespace)
