"""Fixtures of the chaos tier: the broker it breaks has what ordered subscriptions need."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _broker_has_consistent_hash(consistent_hash_exchange: None) -> None:
    """Every chaos test runs on a broker with the exchange type ordered subscriptions need."""
