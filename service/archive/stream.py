"""The archive's stream: `{ns}.archive`, bound to `{ns}.events` for every routing key.

RabbitMQ keeps it: every event published to the events exchange (by the ingress, by another
service over AMQP, by the delay chain when an event comes due) is appended by the broker, with
its properties and headers; the ingress publishes nothing more. Retention is by age and by size,
and works on whole segment files (docs/archive.md, "Sizing").
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractChannel
from pamqp.common import FieldTable

from producers.topology import Topology
from service.settings import Settings

__all__ = ["ArchiveSpec", "archive_spec", "declare_archive", "stream_arguments"]


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """How long and how much the stream keeps."""

    max_age: float  # seconds
    max_bytes: int
    segment_bytes: int


def archive_spec(settings: Settings) -> ArchiveSpec | None:
    """The archive the settings ask for; None when CONVEYOR_ARCHIVE is unset."""
    if settings.archive is None:
        return None
    return ArchiveSpec(
        max_age=settings.archive,
        max_bytes=settings.archive_max_bytes,
        segment_bytes=settings.archive_segment_bytes,
    )


def stream_arguments(spec: ArchiveSpec) -> FieldTable:
    # x-max-age takes whole units (Y, M, D, h, m, s); seconds cover every retention we accept.
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max(1, round(spec.max_age))}s",
        "x-max-length-bytes": spec.max_bytes,
        "x-stream-max-segment-size-bytes": spec.segment_bytes,
    }


async def declare_archive(channel: AbstractChannel, topology: Topology, spec: ArchiveSpec) -> None:
    """Declare the stream and bind it to the events exchange with `#`: every event."""
    stream = await channel.declare_queue(
        topology.archive, durable=True, arguments=stream_arguments(spec)
    )
    await stream.bind(topology.events_exchange, routing_key="#")
