"""Publishing events to RabbitMQ: the wire contract, the confirm-tracking publisher, a client.

The package exports what another service needs to publish to conveyor over AMQP; the rest is
imported from its own modules (`producers.publisher`, `producers.topology`, ...).
"""

from producers.client import EventClient
from producers.event import OutgoingEvent, new_event
from producers.formats import InvalidEventError
from producers.publisher import (
    BrokerUnavailableError,
    PublishError,
    PublishRejectedError,
    PublishTimeoutError,
)

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
