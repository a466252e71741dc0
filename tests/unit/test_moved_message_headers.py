"""Headers of a moved message (dead-lettered or retried): made writable, cut to fit one frame."""

from __future__ import annotations

import pytest

from consumers.moves import MAX_HEADER_TABLE_BYTES, MoveFailedError, fit_headers


def test_headers_pamqp_reads_but_cannot_write_are_made_writable() -> None:
    fitted = fit_headers({"raw": b"\xff\xfe", "huge": 1e300, "nested": {"b": b"x"}, "ok": 1.5})
    assert fitted["raw"] == bytearray(b"\xff\xfe")
    assert fitted["huge"] == "1e+300"
    assert fitted["nested"] == {"b": bytearray(b"x")}
    assert fitted["ok"] == 1.5


def test_oversized_headers_lose_our_traceback_and_message_first() -> None:
    padding = "p" * (MAX_HEADER_TABLE_BYTES - 1000)
    fitted = fit_headers(
        {
            "pad": padding,
            "x-conveyor-error-traceback": "t" * 2000,
            "x-conveyor-error-message": "m" * 1000,
            "x-conveyor-reason": "retries-exhausted",
        }
    )
    assert "x-conveyor-error-traceback" not in fitted
    assert fitted["x-conveyor-reason"] == "retries-exhausted"
    assert fitted["pad"] == padding


def test_headers_too_large_on_their_own_fail_the_move() -> None:
    with pytest.raises(MoveFailedError):
        fit_headers({"pad": "p" * (MAX_HEADER_TABLE_BYTES + 10)})
