"""The archive's pure parts: reading a message as an event, the window and filters, the stream's
arguments, and what a replay's copy carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.dead_letter import REPLAY
from consumers.reporting import replay_subscription
from consumers.stages import replay_id
from service.archive.events import STREAM_OFFSET, ArchiveQuery, archived_event
from service.archive.replay_progress import ReplayRequest
from service.archive.stream import ArchiveSpec, stream_arguments
from service.settings import SettingError
from service.subscription_config import load_subscriptions

BINARY: dict[str, object] = {
    "ce-specversion": "1.0",
    "ce-id": "e-1",
    "ce-type": "order.placed",
    "ce-source": "/shop",
    "ce-subject": "cart-9",
    "ce-time": "2026-01-02T03:04:05Z",
    "x-conveyor-attempts": 3,
    STREAM_OFFSET: 41,
}


def test_a_binary_event_is_read_with_its_attributes_and_its_publish_time() -> None:
    stamp = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    event = archived_event(
        41, b'{"n":1}', BINARY, content_type="application/json", message_id="e-1",
        routing_key="order.placed", timestamp=stamp,
    )  # fmt: skip

    assert event.summary() == {
        "offset": 41,
        "id": "e-1",
        "type": "order.placed",
        "source": "/shop",
        "subject": "cart-9",
        "time": "2026-05-06T07:08:09Z",
        "size": 7,
    }


def test_without_a_timestamp_the_event_time_counts_and_a_foreign_message_keeps_what_it_has() -> (
    None
):
    timed = archived_event(
        1, b"", BINARY, content_type=None, message_id="e-1", routing_key="x", timestamp=None
    )
    foreign = archived_event(
        2, b"\xff", {"other": "x"}, content_type=None, message_id="m-2", routing_key="a.b",
        timestamp=None,
    )  # fmt: skip

    assert timed.time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert (foreign.id, foreign.type, foreign.source, foreign.time) == ("m-2", "a.b", "", None)
    assert foreign.document()["data_encoding"] == "base64"


def test_the_window_and_the_filters() -> None:
    event = archived_event(
        1, b"", BINARY, content_type=None, message_id="e-1", routing_key="order.placed",
        timestamp=datetime.fromtimestamp(100, UTC),
    )  # fmt: skip

    assert ArchiveQuery(since=100, until=101).matches(event)
    assert not ArchiveQuery(since=101, until=200).matches(event)  # a chunk's earlier neighbour
    assert not ArchiveQuery(since=0, until=100).matches(event)
    assert ArchiveQuery(since=0, until=200, type_pattern="order.*").matches(event)
    assert not ArchiveQuery(since=0, until=200, type_pattern="user.#").matches(event)
    assert not ArchiveQuery(since=0, until=200, source="/other").matches(event)
    assert ArchiveQuery(since=0, until=200, source="/shop", subject="cart-9").matches(event)
    assert not ArchiveQuery(since=0, until=200, subject="cart-1").matches(event)
    assert not ArchiveQuery(since=0, until=100).past(event)  # within the clock skew
    assert ArchiveQuery(since=0, until=90).past(event)


def test_a_replay_copy_drops_old_counters_and_the_offset_and_carries_the_replay_id() -> None:
    event = archived_event(
        1, b"", BINARY, content_type=None, message_id="e-1", routing_key="x", timestamp=None
    )

    headers = event.replay_headers("rp-1", REPLAY)

    assert headers[REPLAY] == "rp-1"
    assert "x-conveyor-attempts" not in headers
    assert STREAM_OFFSET not in headers
    assert headers["ce-id"] == "e-1"


def test_the_consumer_reads_a_replay_id_and_records_it_under_its_own_key() -> None:
    assert replay_id({REPLAY: "rp-1"}) == "rp-1"
    assert replay_id({REPLAY: b"rp-2"}) == "rp-2"
    assert replay_id({REPLAY: "x" * 65}) is None
    assert replay_id({}) is None
    assert replay_subscription("orders", "rp-1") == "orders@replay:rp-1"


def test_the_stream_is_bounded_by_age_size_and_segment() -> None:
    arguments = stream_arguments(
        ArchiveSpec(max_age=7 * 86400, max_bytes=10**9, segment_bytes=10**8)
    )

    assert arguments == {
        "x-queue-type": "stream",
        "x-max-age": "604800s",
        "x-max-length-bytes": 10**9,
        "x-stream-max-segment-size-bytes": 10**8,
    }


def test_a_backfill_is_the_same_replay_at_every_start_and_others_differ_by_window() -> None:
    window = ArchiveQuery(since=1, until=2)
    later = ArchiveQuery(since=5, until=9)
    backfill = ReplayRequest("backfill-a", "a", window, 1.0, backfill=True)
    moved = ReplayRequest("backfill-a", "a", later, 1.0, backfill=True)
    plain = ReplayRequest("rp", "a", window, 1.0)

    assert backfill.fingerprint() == moved.fingerprint()
    assert plain.fingerprint() != ReplayRequest("rp", "a", later, 1.0).fingerprint()


def test_backfill_is_a_duration_in_the_subscriptions_file(tmp_path: Path) -> None:
    config = tmp_path / "subscriptions.toml"
    entry = (
        '[[subscriptions]]\nname = "late"\nevents = ["a.*"]\n'
        'handler = "consumers.builtin:log_event"\n'
    )
    config.write_text(entry + 'backfill = "7d"\n')
    assert load_subscriptions(config)[0].backfill == 7 * 86400
    config.write_text(entry + 'backfill = "soon"\n')
    with pytest.raises(SettingError, match="backfill"):
        load_subscriptions(config)
    config.write_text(entry.replace('"late"', '"archive"'))
    with pytest.raises(SettingError, match="archive"):
        load_subscriptions(config)
