"""producers.format_timestamp: the text `format_time(datetime.fromtimestamp(t, UTC))` gives."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from producers.event import format_time, format_timestamp


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))  # up to 2100
def test_a_unix_time_reads_as_its_datetime_does(seconds: float) -> None:
    assert format_timestamp(seconds) == format_time(datetime.fromtimestamp(seconds, UTC))


def test_whole_seconds_and_rounding_up_to_the_next_second() -> None:
    assert format_timestamp(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert format_timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"
    assert format_timestamp(1_700_000_000.9999996) == "2023-11-14T22:13:21Z"
