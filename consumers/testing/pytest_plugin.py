"""The pytest side of consumers.testing: a `conveyor_harness` fixture.

Registered through the `pytest11` entry point, so an installed conveyor offers it to every test
suite. The subscriptions come from the `conveyor_subscriptions` fixture, which reads the
`conveyor_subscriptions` ini option (default `subscriptions.toml`, relative to the rootdir);
override that fixture to hand in a file of your own or a list of `Subscription`s.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path

import pytest

from consumers.subscription import Subscription
from consumers.testing.conveyor import TestConveyor

__all__ = ["conveyor_harness", "conveyor_subscriptions", "pytest_addoption"]

_INI = "conveyor_subscriptions"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI,
        "the subscriptions file the conveyor_harness fixture runs (relative to the rootdir)",
        default="subscriptions.toml",
    )


@pytest.fixture
def conveyor_subscriptions(
    request: pytest.FixtureRequest,
) -> str | PathLike[str] | Iterable[Subscription]:
    """What `conveyor_harness` runs: the ini option's file; override it for another."""
    return Path(request.config.rootpath) / str(request.config.getini(_INI))


@pytest.fixture
def conveyor_harness(
    conveyor_subscriptions: str | PathLike[str] | Iterable[Subscription],
) -> TestConveyor:
    """A `TestConveyor` of `conveyor_subscriptions`; nothing of it runs between two sends, so
    the fixture needs no event loop of its own."""
    return TestConveyor(conveyor_subscriptions)
