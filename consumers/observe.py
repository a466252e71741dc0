"""What the consumer runtime reports about each delivery, for whoever measures it."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_DELIVERY_OBSERVER", "DeliveryObserver"]


class DeliveryObserver(Protocol):
    def handler_ran(self, subscription: str, seconds: float) -> None:
        """One delivery's handler attempts (in-process retries included) took `seconds`."""
        ...

    def delivery_settled(self, subscription: str, outcome: str) -> None:
        """`outcome`: acked, retry-scheduled, dead-lettered, skipped or returned."""
        ...

    def retry_scheduled(self, subscription: str, tier: str) -> None: ...


class _NoDeliveryObserver:
    def handler_ran(self, subscription: str, seconds: float) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def delivery_settled(self, subscription: str, outcome: str) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None

    def retry_scheduled(self, subscription: str, tier: str) -> None:  # noqa: ARG002 - a null observer ignores what it is told
        return None


NO_DELIVERY_OBSERVER: DeliveryObserver = _NoDeliveryObserver()
