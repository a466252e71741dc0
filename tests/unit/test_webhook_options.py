"""The webhook handler's options and its reading of Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consumers.webhook import WebhookOptions, _retry_after
from service.settings import parse_duration


@pytest.mark.parametrize("value", ["²", "soon", "Mon, 32 Foo 2026", ""])
def test_unusable_retry_after_values_are_ignored(value: str) -> None:
    assert _retry_after(value) is None


def test_a_retry_after_date_without_zone_counts_as_gmt() -> None:
    later = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    seconds = _retry_after(later)
    assert seconds is not None
    assert 50 < seconds <= 60


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"url": "http://x/", "timeout": "0s"}, "above zero"),
        ({"url": "http://x/", "headers": {"X-A": "a\r\nInjected: 1"}}, "single-line"),
        ({"url": "http://x/", "retries": 3}, "unknown"),
    ],
)
def test_webhook_options_that_would_fail_every_request_are_refused(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        WebhookOptions.parse(options, parse_duration)
