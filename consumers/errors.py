"""What a handler raises to say how its failure should be treated."""

from __future__ import annotations

__all__ = ["PermanentError", "RetryableError"]


class PermanentError(Exception):
    """Retrying cannot help (bad data, a 4xx from a downstream): dead-letter at once."""


class RetryableError(Exception):
    """A transient failure; `retry_after` (seconds) is the downstream's own hint, if it gave one.

    Any exception other than PermanentError is retried too; raise this to pass the hint.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
