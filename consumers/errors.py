"""What a handler raises to say how its failure should be treated.

Either may carry a `detail` (such as the first bytes of a downstream's answer), which goes with
the failure into the retry and dead-letter headers (`x-conveyor-error-detail`).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["PermanentError", "RetryableError"]


class PermanentError(Exception):
    """Retrying cannot help (bad data, a 4xx from a downstream): dead-letter at once."""

    # The dead-letter reason (`x-conveyor-reason`); conveyor's own subclasses name theirs.
    reason: ClassVar[str] = "permanent-error"

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class RetryableError(Exception):
    """A transient failure; `retry_after` (seconds) is the downstream's own hint, if it gave one.

    Any exception other than PermanentError is retried too; raise this to pass the hint.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.detail = detail
