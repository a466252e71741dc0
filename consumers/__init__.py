"""Consuming events from RabbitMQ and handing them to handlers.

The package exports what a handler author uses; the runtime is imported from its own modules
(`consumers.runtime`, `consumers.subscription`, ...).
"""

from consumers.errors import PermanentError, RetryableError
from consumers.event import Event, Handler

__all__ = ["Event", "Handler", "PermanentError", "RetryableError"]
