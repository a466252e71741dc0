"""Consuming events from RabbitMQ and handing them to handlers."""

from consumers.decoding import MalformedEventError, decode_event
from consumers.errors import PermanentError, RetryableError
from consumers.event import Event, Handler
from consumers.moves import MessageMover
from consumers.retry import RetryPolicy, delay_label
from consumers.runtime import Outcome, SubscriptionConsumer
from consumers.subscription import Subscription
from consumers.topology import DELIVERY_LIMIT, declare_subscription_queue

__all__ = [
    "DELIVERY_LIMIT",
    "Event",
    "Handler",
    "MalformedEventError",
    "MessageMover",
    "Outcome",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "Subscription",
    "SubscriptionConsumer",
    "declare_subscription_queue",
    "decode_event",
    "delay_label",
]
