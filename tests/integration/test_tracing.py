"""OpenTelemetry: ingest, publish and handling spans form one trace through RabbitMQ."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.otel import OtelTracing
from tests.conftest import Namespace, StartConveyor, subscription
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def test_a_client_trace_continues_through_ingest_publish_and_the_handler(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("traced", ("trace.*",), recorder),),
        tracing=OtelTracing(provider, namespace=namespace.name),
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
