"""Publishing events to RabbitMQ: the wire contract, the confirm-tracking publisher, a client.

The package exports what another service needs to publish to conveyor over AMQP; the rest is
imported from its own modules (`producers.publisher`, `producers.topology`, ...).
"""

from producers.client import EventClient
from producers.deadlines import settle_by, wait_by
from producers.event import OutgoingEvent, format_time, format_timestamp, new_event
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
from producers.pipeline import ChannelPipeline
from producers.publisher import (
    BROKER_FAILURES,
    BrokerUnavailableError,
    PublishError,
    PublishRejectedError,
    PublishTimeoutError,
)
from producers.same_id import SameIdGate
from producers.topology import Topology
from producers.wire import CE_HEADER_PREFIX, TRACEPARENT_HEADER, to_wire_message

__all__ = [
    "BrokerUnavailableError",
    "EventClient",
    "InvalidEventError",
    "OutgoingEvent",
    "PublishError",
    "PublishRejectedError",
    "PublishTimeoutError",
    "new_event",
]
# consumers/ still reads these through the package; they leave once it imports their modules.
__all__ += [
    "BROKER_FAILURES",
    "CE_HEADER_PREFIX",
    "MAX_ATTRIBUTE_LENGTH",
    "TRACEPARENT_HEADER",
    "ChannelPipeline",
    "SameIdGate",
    "Topology",
    "WireMessage",
    "event_from_json",
    "format_time",
    "format_timestamp",
    "is_json_content_type",
    "parse_time",
    "settle_by",
    "to_wire_message",
    "validate_attributes",
    "validate_content_type",
    "wait_by",
]
