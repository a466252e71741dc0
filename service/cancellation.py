"""Telling a cancellation from the error the AMQP client raised in its place.

aiormq runs a channel's calls in tasks of its own (`TaskWrapper`), and when its connection
closes it makes each of them raise the connection's close reason. A caller cancelled at that
moment gets that reason (an `AMQPConnectionError`, say) instead of its CancelledError. A loop
that takes broker errors as "try again" then goes on after its cancellation, and whoever
cancelled it waits for good: seen as a shutdown that never finished, with the queue stats
poller still polling, when a TLS link and the process stopped together.
"""

from __future__ import annotations

import asyncio

__all__ = ["stop_if_cancelled"]


def stop_if_cancelled(error: BaseException) -> None:
    """Raise CancelledError (from `error`) if the current task has a cancellation pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
