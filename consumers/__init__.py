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
from consumers.ordering import (
    MAX_HOLD_SECONDS,
    MAX_PARTITIONS,
    ORDER_ATTRIBUTES,
    Ordering,
    PartitioningUnavailableError,
    explain_missing_exchange_type,
    longest_hold,
)
from consumers.retry import RetryPolicy, delay_label
from consumers.runtime import SubscriptionConsumer
from consumers.settling import Outcome
from consumers.status import DeliveryState, DeliveryUpdate, StatusLedger
from consumers.subscription import Subscription
from consumers.topology import (
    DELIVERY_LIMIT,
    declare_subscription_queues,
    subscription_queue_names,
)
from consumers.watch import HandlerSteps, LongStep

__all__ = [
    "COMPLETION_SOURCE",
    "COMPLETION_TYPES",
    "DELIVERY_LIMIT",
    "MAX_HOLD_SECONDS",
    "MAX_PARTITIONS",
    "NO_DELIVERY_OBSERVER",
    "NO_HANDLER_TRACER",
    "ORDER_ATTRIBUTES",
    "DeliveryObserver",
    "DeliveryState",
    "DeliveryUpdate",
    "Event",
    "FailureReport",
    "Handler",
    "HandlerSteps",
    "HandlerTracer",
    "LongStep",
    "MalformedEventError",
    "MessageMover",
    "MoveFailedError",
    "Ordering",
    "Outcome",
    "PartitioningUnavailableError",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "StatusLedger",
    "Subscription",
    "SubscriptionConsumer",
    "declare_subscription_queues",
    "decode_event",
    "delay_label",
    "explain_missing_exchange_type",
    "longest_hold",
    "subscription_queue_names",
]
