"""Cut a broker link that went silent, within two missed heartbeats.

RabbitMQ sends a heartbeat every half heartbeat timeout when it has nothing else to send, and
counts a peer unreachable after two missed ones. aiormq 7 waits far longer: it gives up on a
silent connection only after 3 x (timeout + 1) seconds (`HEARTBEAT_GRACE_MULTIPLIER`), 48 s at
our 15 s. Through all that time a stalled link (a network that drops packets without a reset)
looks connected: /readyz stays 200 and every publish waits out its timeout. The watchdog reads
when the last frame arrived and, once the link has been silent for a whole timeout, cancels
the connection's reader the way aiormq itself does, so the robust connection reconnects. Both
are aiormq internals, read through `producers.amqp_internals`.
"""

from __future__ import annotations

import asyncio

import structlog
from aio_pika.abc import AbstractRobustConnection

from producers.amqp_internals import last_frame_time, running_reader

__all__ = ["silent_for", "watch_for_silence"]

_log = structlog.get_logger(component="broker")


def silent_for(connection: AbstractRobustConnection) -> float:
    """Seconds since the current underlying connection last received a frame (0 if unknown)."""
    last = last_frame_time(connection)
    if last is None:
        return 0.0
    return asyncio.get_running_loop().time() - last


async def watch_for_silence(connection: AbstractRobustConnection, heartbeat: float) -> None:
    """Forever: every quarter heartbeat, cut the link if nothing came for a whole heartbeat."""
    while True:
        await asyncio.sleep(heartbeat / 4)
        if connection.is_closed or not connection.connected.is_set():
            continue  # reconnecting already; the new connection starts its own clock
        silence = silent_for(connection)
        if silence <= heartbeat:
            continue
        reader = running_reader(connection)
        if reader is not None:
            _log.warning(
                "broker link silent past two heartbeats; reconnecting",
                silent_seconds=round(silence, 1),
                heartbeat_seconds=heartbeat,
            )
            reader.cancel()
