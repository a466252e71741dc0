"""Consuming events from RabbitMQ and handing them to handlers."""

from consumers.completions import COMPLETION_SOURCE, COMPLETION_TYPES
from consumers.decoding import MalformedEventError, decode_event
from consumers.errors import PermanentError, RetryableError
from consumers.event import Event, Handler
from consumers.moves import MessageMover, MoveFailedError
from consumers.observe import (
    NO_DELIVERY_OBSERVER,
    NO_HANDLER_TRACER,
    DeliveryObserver,
    FailureReport,
    HandlerTracer,
)
from consumers.retry import RetryPolicy, delay_label
from consumers.runtime import Outcome, SubscriptionConsumer
from consumers.status import DeliveryState, DeliveryUpdate, StatusLedger
from consumers.subscription import Subscription
from consumers.topology import DELIVERY_LIMIT, declare_subscription_queue

__all__ = [
    "COMPLETION_SOURCE",
    "COMPLETION_TYPES",
    "DELIVERY_LIMIT",
    "NO_DELIVERY_OBSERVER",
    "NO_HANDLER_TRACER",
    "DeliveryObserver",
    "DeliveryState",
    "DeliveryUpdate",
    "Event",
    "FailureReport",
    "Handler",
    "HandlerTracer",
    "MalformedEventError",
    "MessageMover",
    "MoveFailedError",
    "Outcome",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "StatusLedger",
    "Subscription",
    "SubscriptionConsumer",
    "declare_subscription_queue",
    "decode_event",
    "delay_label",
]
