"""Text from the service made safe and readable on a terminal.

Event data, headers and error messages come from whoever published the event: control
characters (an escape sequence would drive the operator's terminal) are shown escaped.
"""

from __future__ import annotations

import re

__all__ = ["indented", "one_line", "printable"]

# C0 and C1 controls and DEL, except tab and newline, which `indented` lays out.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BREAK = re.compile(r"\r?\n|\t")


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def printable(text: str) -> str:
    """One line: line breaks, tabs and control characters escaped."""
    return _CONTROL.sub(_escape, _BREAK.sub(_escape, text))


def one_line(text: str) -> str:
    """For a table cell: whitespace runs (line breaks too) as one space, controls escaped."""
    return _CONTROL.sub(_escape, " ".join(text.split()))


def indented(text: str, prefix: str = "  ") -> str:
    """Each line of `text` under `prefix` (a traceback as the lines it is), controls escaped."""
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    return "\n".join(prefix + _CONTROL.sub(_escape, line.expandtabs(4)) for line in lines)
