"""Telling a cancellation from the error the AMQP client raised in its place, and stopping a
task that may not take its cancellation.

aiormq runs a channel's calls in tasks of its own (`TaskWrapper`), and when its connection
closes it makes each of them raise the connection's close reason. A caller cancelled at that
moment gets that reason (an `AMQPConnectionError`, say) instead of its CancelledError. A loop
that takes broker errors as "try again" then goes on after its cancellation, and whoever
cancelled it waits for good: seen as a shutdown that never finished, with the queue stats
poller still polling, when a TLS link and the process stopped together.

`stop_task` bounds every shutdown wait on a task of ours: the broker link's, its watchers', and
the store's batchers and purge loop, so no driver that mistakes a cancellation for an error
can hold the process at SIGTERM.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

__all__ = ["STOP_SECONDS", "stop_if_cancelled", "stop_task"]

# How long a shutdown waits for a cancelled task of ours (a batcher, a poller) to end.
STOP_SECONDS = 5.0

_log = structlog.get_logger(component="service")


def stop_if_cancelled(error: BaseException) -> None:
    """Raise CancelledError (from `error`) if the current task has a cancellation pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


async def stop_task(task: asyncio.Task[Any], timeout: float) -> None:
    """Cancel `task` and wait `timeout` seconds at most for it to end (one that ignores its
    cancellation must not hold a shutdown for good); log one left running, or one that failed."""
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        _log.error("a task ignored its cancellation; left running", task=task.get_name())
    elif not task.cancelled() and (error := task.exception()) is not None:
        _log.warning("a task had failed", task=task.get_name(), error=repr(error))
