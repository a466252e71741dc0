"""What the CLI prints of publishers' text: controls escaped, tracebacks kept as lines."""

from __future__ import annotations

from service.cli.text import indented, one_line, printable


def test_control_characters_are_shown_escaped() -> None:
    hostile = "paid\x1b[2J\x07 \x9b31m"

    assert printable(hostile) == "paid\\x1b[2J\\x07 \\x9b31m"
    assert one_line(hostile) == "paid\\x1b[2J\\x07 \\x9b31m"
    assert indented(hostile) == "  paid\\x1b[2J\\x07 \\x9b31m"


def test_line_breaks_per_context() -> None:
    trace = 'Traceback (most recent call last):\r\n  File "h.py", line 1\n\tboom\nError: x\n'

    assert indented(trace).splitlines() == [
        "  Traceback (most recent call last):",
        '    File "h.py", line 1',
        "      boom",
        "  Error: x",
    ]
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert one_line("a\n  b\tc") == "a b c"
