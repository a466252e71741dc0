"""Events published over AMQP with a `deliverat` still ahead: held on the broker until due.

An event published straight to `{ns}.events` reaches the subscription queues at once. Its
consumer, seeing `deliverat` more than half a second ahead, does not run the handler: it moves
a copy into the delay chain (producers.delay), confirmed before the delivery is acked, like a
move into a retry tier. The copy names this subscription's queue (an ordered subscription's
partition exchange) as where it goes back to, so when it is due only this subscription gets it
again, not every subscription bound to `{ns}.events`; it therefore goes to the subscriptions
that existed when it was published. An event due further ahead than the chain holds is held
as long as the chain allows, and again when it comes back, until it is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from consumers.settling import Move, Outcome, Verdict
from consumers.stages import Judging
from consumers.subscription import Subscription
from producers.delay import DELIVER_KEY_HEADER, DELIVER_TO_HEADER, DelayChain
from producers.formats import InvalidEventError, parse_time
from producers.topology import Topology

__all__ = ["DeferUntilDue"]

_log = structlog.get_logger(component="consumer")
# The chain counts whole seconds and rounds to the nearest: an event back from it is at most
# this early, and is handled, not held again.
_EARLY_TOLERANCE_SECONDS = 0.5


class DeferUntilDue:
    """A check stage: an event not due yet is moved into the delay chain, unhandled."""

    def __init__(
        self,
        subscription: Subscription,
        topology: Topology,
        chain: DelayChain,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._chain = chain
        self._now = now
        if subscription.ordering is None:
            # Back through the default exchange, straight to the queue.
            self._back = ("", topology.queue(subscription.name))
        else:
            # The hash exchange sends it to its key's partition again (the routing key is
            # not what it hashes).
            self._back = (topology.partition_exchange(subscription.name), "")

    async def __call__(self, judging: Judging) -> Verdict | None:
        text = judging.event.extensions.get("deliverat")
        if not isinstance(text, str):
            return None
        try:
            due = parse_time(text).timestamp()
        except InvalidEventError:
            _log.warning("deliverat is not an RFC 3339 timestamp; handled now", deliverat=text)
            return None
        wait = due - self._now()
        if wait <= _EARLY_TOLERANCE_SECONDS:
            return None
        seconds = min(round(wait), self._chain.longest)
        exchange, routing_key = self._back
        headers = {
            **judging.headers,
            DELIVER_TO_HEADER: exchange,
            DELIVER_KEY_HEADER: routing_key or judging.event.type,
        }
        _log.info("event not due yet; held in the delay chain", due_in_seconds=seconds)
        move = Move(self._chain.entry, self._chain.routing_key(seconds), headers)
        return Verdict(Outcome.DEFERRED, move)
