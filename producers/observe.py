"""What the publisher reports about each publish, for whoever measures it (the metrics)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_PUBLISH_OBSERVER", "PublishObserver"]


class PublishObserver(Protocol):
    def publish_started(self) -> None: ...

    def publish_finished(self, outcome: str, seconds: float) -> None:
        """`outcome`: ack, nack, returned, timeout or unavailable."""
        ...


class _NoPublishObserver:
    def publish_started(self) -> None:
        return None

    def publish_finished(self, outcome: str, seconds: float) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None


NO_PUBLISH_OBSERVER: PublishObserver = _NoPublishObserver()
