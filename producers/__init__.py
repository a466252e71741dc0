"""Publishing events to RabbitMQ: the wire contract, the confirm-tracking publisher, a client."""

from producers.client import EventClient
from producers.deadlines import settle_by, wait_by
from producers.event import (
    SPECVERSION,
    OutgoingEvent,
    format_time,
    format_timestamp,
    new_event,
)
from producers.formats import (
    MAX_ATTRIBUTE_LENGTH,
    InvalidEventError,
    event_from_json,
    is_json_content_type,
    parse_time,
    validate_attributes,
    validate_content_type,
)
from producers.frames import WireMessage
from producers.observe import NO_PUBLISH_OBSERVER, PublishObserver
from producers.pipeline import ChannelPipeline
from producers.publisher import (
    BROKER_FAILURES,
    AmqpPublisher,
    BrokerUnavailableError,
    Publisher,
    PublishError,
    PublishRejectedError,
    PublishTimeoutError,
)
from producers.same_id import SameIdGate
from producers.topology import Topology, declare_events_exchange, declare_results_exchange
from producers.wire import CE_HEADER_PREFIX, TRACEPARENT_HEADER, to_amqp_message, to_wire_message

__all__ = [
    "BROKER_FAILURES",
    "CE_HEADER_PREFIX",
    "MAX_ATTRIBUTE_LENGTH",
    "NO_PUBLISH_OBSERVER",
    "SPECVERSION",
    "TRACEPARENT_HEADER",
    "AmqpPublisher",
    "BrokerUnavailableError",
    "ChannelPipeline",
    "EventClient",
    "InvalidEventError",
    "OutgoingEvent",
    "PublishError",
    "PublishObserver",
    "PublishRejectedError",
    "PublishTimeoutError",
    "Publisher",
    "SameIdGate",
    "Topology",
    "WireMessage",
    "declare_events_exchange",
    "declare_results_exchange",
    "event_from_json",
    "format_time",
    "format_timestamp",
    "is_json_content_type",
    "new_event",
    "parse_time",
    "settle_by",
    "to_amqp_message",
    "to_wire_message",
    "validate_attributes",
    "validate_content_type",
    "wait_by",
]
