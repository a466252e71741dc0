"""The first-copy mark: what lets a consumer skip its "already succeeded?" lookup.

The ingress marks an event it publishes after a claim that was its key's first (no earlier
attempt, within the idempotency TTL, could have put a copy in RabbitMQ). The mark is a keyed
BLAKE2b digest of the event's source and id, under a key only conveyor's processes hold (kept
in their shared store): a publisher that bypasses the ingress cannot mark an event of its own,
nor carry a mark over from another event. It can only copy a marked message as it is (a shovel
or federation that keeps headers, a script that re-publishes a consumed message); that copy is
a duplicate the consumer no longer looks up, so its handler runs again. The mark only ever
skips the lookup, never the handler: at-least-once holds either way (docs/amqp.md).

Hand-written: a keyed hash is all it takes, and hashlib has it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["FIRST_COPY_HEADER", "KEY_BYTES", "FirstCopyMarks"]

FIRST_COPY_HEADER = "x-conveyor-first-copy"
KEY_BYTES = 32
_DIGEST_BYTES = 16


class FirstCopyMarks:
    """Makes and checks marks under one key; every process of a deployment must share it."""

    def __init__(self, key: bytes | None = None) -> None:
        # Without a shared key (a process on its own), marks are checked only where made.
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)

    def mark(self, source: str, event_id: str) -> str:
        digest = hashlib.blake2b(
            f"{source}\0{event_id}".encode(), key=self._key, digest_size=_DIGEST_BYTES
        )
        return digest.hexdigest()

    def vouches(self, mark: object, source: str, event_id: str) -> bool:
        """Whether `mark` (a header's value, of any type) is this event's mark."""
        if isinstance(mark, bytes):
            mark = mark.decode("ascii", "replace")
        if not isinstance(mark, str):
            return False
        return hmac.compare_digest(mark, self.mark(source, event_id))
