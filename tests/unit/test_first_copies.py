"""Which deliveries count as a first copy, and whose mark vouches for an event (pure logic)."""

from __future__ import annotations

import pytest

from consumers.first_copies import REPLAY_HEADER, first_copy_mark
from producers.first_copy import FIRST_COPY_HEADER, FirstCopyMarks

MARKS = FirstCopyMarks(b"k" * 32)
MARK = MARKS.mark("/shop", "e-1")


def test_a_mark_vouches_only_for_its_own_event_under_its_own_key() -> None:
    assert MARKS.vouches(MARK, "/shop", "e-1")
    assert MARKS.vouches(MARK.encode(), "/shop", "e-1")  # a header value may come as bytes
    assert not MARKS.vouches(MARK, "/shop", "e-2")  # copied onto another event
    assert not MARKS.vouches(MARK, "/other", "e-1")
    assert not MARKS.vouches("0" * 32, "/shop", "e-1")  # made up
    assert not MARKS.vouches(1, "/shop", "e-1")
    assert not FirstCopyMarks(b"o" * 32).vouches(MARK, "/shop", "e-1")  # another deployment
    # Without a shared key a book makes its own: its marks hold only where they were made.
    assert not FirstCopyMarks().vouches(MARK, "/shop", "e-1")


def test_a_marked_fresh_delivery_offers_its_mark() -> None:
    headers = {"ce-id": "e-1", FIRST_COPY_HEADER: MARK, "x-delivery-count": 0}
    assert first_copy_mark(headers, redelivered=False) == MARK


@pytest.mark.parametrize(
    "extra",
    [
        {"x-delivery-count": 1},  # a quorum queue's redelivery count
        {"x-death": [{"reason": "expired"}]},
        {"x-conveyor-attempts": 1},  # back from the retry ladder
        {"x-conveyor-retries": 1},
        {"x-conveyor-replays": 1},  # replayed from the dead-letter queue
        {REPLAY_HEADER: "archive"},  # replayed from an archive
        {"X-Conveyor-Reason": "permanent-error"},  # a DLQ entry re-published as it was
    ],
)
def test_anything_that_says_it_may_be_a_copy_keeps_the_lookup(extra: dict[str, object]) -> None:
    headers = {"ce-id": "e-1", FIRST_COPY_HEADER: MARK} | extra
    assert first_copy_mark(headers, redelivered=False) is None


def test_a_redelivered_or_unmarked_delivery_keeps_the_lookup() -> None:
    assert first_copy_mark({FIRST_COPY_HEADER: MARK}, redelivered=True) is None
    assert first_copy_mark({"ce-id": "e-1"}, redelivered=False) is None
