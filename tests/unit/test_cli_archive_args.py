"""`conveyor archive`'s arguments, checked before anything is asked: times, ids, the one target."""

from __future__ import annotations

import argparse
import io

import pytest

from service.cli.archive import _progress_line, _time, archive_command
from service.cli.http_client import UsageError


class FixedClock:
    def now(self) -> float:
        return 1_000_000.0


def test_times_are_rfc_3339_unix_seconds_or_a_duration_ago() -> None:
    clock = FixedClock()

    assert _time("2026-01-02T03:04:05Z", "--since", clock) == "1767323045.0"
    assert _time("1700000000.5", "--since", clock) == "1700000000.5"
    assert _time("2h", "--since", clock) == str(1_000_000.0 - 7200)
    with pytest.raises(UsageError, match="--until: an RFC 3339 time"):
        _time("yesterday", "--until", clock)


def _arguments(**given: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "action": "ls",
        "id": None,
        "since": None,
        "until": None,
        "type": None,
        "source": None,
        "subject": None,
        "limit": None,
        "after_offset": None,
        "to": None,
        "rate": None,
        "replay_id": None,
        "dry_run": False,
        "detach": False,
        "json": False,
        "url": "http://127.0.0.1:9",
        "token": None,
    }
    return argparse.Namespace(**(defaults | given))


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ({"action": "ls"}, "--since is required"),
        ({"action": "show", "since": "1h"}, "archive show takes an id"),
        ({"action": "ls", "id": "x", "since": "1h"}, "takes no id"),
        ({"action": "replay", "since": "1h"}, "--to SUBSCRIPTION"),
        ({"action": "ls", "since": "1h", "limit": 0}, "--limit: 1 to 1000"),
        ({"action": "ls", "since": "1h", "type": " "}, "--type: give a value"),
    ],
)
async def test_usage_errors_are_caught_before_any_request(
    given: dict[str, object], complaint: str
) -> None:
    with pytest.raises(UsageError, match=complaint):
        await archive_command(_arguments(**given), io.StringIO(), FixedClock())


def test_the_progress_line_names_an_unconfirmed_event() -> None:
    line = _progress_line(
        {
            "replay_id": "r-1",
            "subscription": "orders",
            "state": "interrupted",
            "scanned": 9,
            "matched": 7,
            "published": 5,
            "uncertain": {"id": "e-6", "offset": 41},
            "error": "connection lost",
        }
    )

    assert line == (
        "replay r-1 into orders: interrupted, scanned 9, matched 7, published 5; "
        "unconfirmed: e-6 (offset 41); connection lost"
    )
