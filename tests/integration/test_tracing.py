"""OpenTelemetry: ingest, publish and handling spans form one trace through RabbitMQ."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumers import PermanentError
from service.observability.otel_spans import OtelTracing
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def recording(namespace: Namespace) -> tuple[OtelTracing, InMemorySpanExporter]:
    """Tracing that keeps its finished spans in memory for the test to read."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider, namespace=namespace.name), exporter


CLIENT_SPAN = "00f067aa0ba902b7"


async def test_a_client_trace_continues_through_ingest_publish_and_the_handler(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    tracing, exporter = recording(namespace)
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("traced", ("trace.*",), recorder),), tracing=tracing
    )

    response = await conveyor.client.post(
        "/v1/events",
        json={"type": "trace.me", "id": "t-1", "source": "/t"},
        headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
    )
    assert response.status == 202
    await recorder.wait_for(1)

    def finished() -> dict[SpanKind, ReadableSpan]:
        return {span.kind: span for span in exporter.get_finished_spans()}

    async def three_spans() -> bool:
        return {SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER} <= set(finished())

    await eventually(three_spans, what="ingest, publish and process spans")
    spans = finished()
    ingest, publish, process = (
        spans[k] for k in (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER)
    )
    assert ingest.parent is not None
    assert publish.parent is not None
    assert process.parent is not None
    assert ingest.context is not None
    assert publish.context is not None
    traces = {format(s.context.trace_id, "032x") for s in (ingest, publish, process) if s.context}
    assert traces == {TRACE_ID}
    assert format(ingest.parent.span_id, "016x") == CLIENT_SPAN
    assert ingest.name == "POST /v1/events"
    assert publish.parent.span_id == ingest.context.span_id
    assert publish.name == "publish trace.me"
    # The consumer joined through the traceparent the AMQP message carried.
    assert process.parent.span_id == publish.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.consumer.group.name"] == "traced"
    assert process.attributes["messaging.message.id"] == "t-1"


async def test_a_failed_delivery_marks_its_span_as_an_error(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    tracing, exporter = recording(namespace)

    async def refuse(_event: object) -> None:
        raise PermanentError("no such account")

    conveyor = await start_conveyor(
        (subscription("strict", ("trace.*",), refuse),), tracing=tracing
    )
    assert (await conveyor.post({"type": "trace.bad", "id": "f-1", "source": "/t"})).status == 202

    async def consumer_span() -> bool:
        return any(span.kind is SpanKind.CONSUMER for span in exporter.get_finished_spans())

    await eventually(consumer_span, what="the process span")
    [process] = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CONSUMER]
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "PermanentError: no such account"
    assert process.attributes is not None
    assert process.attributes["error.type"] == "PermanentError"
