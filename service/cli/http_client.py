"""What every client command shares: the checked `--url` and `--token`, one request to the
running conveyor, the exit codes, and printing (tables, JSON, the one line on stderr)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
import orjson
from yarl import URL

__all__ = [
    "EXIT_ANSWERED_ERROR",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Answer",
    "CommandError",
    "UsageError",
    "ask",
    "check_connection_arguments",
    "complain",
    "finish",
    "print_json",
    "print_table",
]

EXIT_ANSWERED_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
MAX_TOKEN_CHARS = 4096
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)


class CommandError(Exception):
    """A command cannot go on: `str(self)` is the one line to print, `exit_code` the status."""

    exit_code = EXIT_ANSWERED_ERROR


class UsageError(CommandError):
    exit_code = EXIT_USAGE


class _UnreachableError(CommandError):
    exit_code = EXIT_UNREACHABLE


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    document: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.status >= 400  # noqa: PLR2004 - an error answer

    def problem_line(self) -> str:
        """The problem as one line: status, title and detail."""
        return f"{self.status} {self.document.get('title', '')}: {self.document.get('detail', '')}"


def check_connection_arguments(arguments: argparse.Namespace) -> None:
    """`--url` and `--token` usable as they are; UsageError (never quoting either) if not."""
    arguments.url = _checked_url(arguments.url)
    token = arguments.token
    # A header value takes no control characters; aiohttp would raise on them mid-request.
    if token is not None and (
        not token.isascii() or not token.isprintable() or not 0 < len(token) <= MAX_TOKEN_CHARS
    ):
        message = f"printable ASCII without spaces, up to {MAX_TOKEN_CHARS} characters"
        raise UsageError(f"--token (or $CONVEYOR_TOKEN): expected {message}")


def _checked_url(raw: str) -> str:
    setting = "--url (or $CONVEYOR_URL)"
    expected = f"{setting}: expected http(s)://host[:port][/path]"
    try:
        url = URL(raw.strip())
        port = url.port
    except ValueError:
        # yarl's messages may quote the host part, which may hold a password: a fixed line.
        raise UsageError(f"{expected}, got an unparseable URL (a bad port or host?)") from None
    if url.user is not None or url.password is not None:
        raise UsageError(
            f"{setting}: credentials do not go in the URL; give a token with --token or "
            "$CONVEYOR_TOKEN"
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"{expected}, got a URL without http(s):// or without a host")
    if port is not None and not 0 < port <= 65535:  # noqa: PLR2004 - the largest TCP port
        raise UsageError(f"{expected}, got port {port} (ports are 1 to 65535)")
    if url.query_string or url.fragment:
        raise UsageError(f"{expected}, got a URL with a query or fragment")
    return str(url).rstrip("/")


async def ask(
    arguments: argparse.Namespace,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    raw_body: bytes | None = None,
    content_type: str | None = None,
) -> Answer:
    """One request; the answer whatever its status, or CommandError when there is none."""
    headers = {"Authorization": f"Bearer {arguments.token}"} if arguments.token else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        async with (
            # No overall limit: a replay of many dead letters at a low rate takes its time.
            aiohttp.ClientSession(timeout=_TIMEOUT) as session,
            session.request(
                method,
                arguments.url + path,
                params=query,
                json=body,
                data=raw_body,
                headers=headers,
            ) as reply,
        ):
            status, raw = reply.status, await reply.read()
    except aiohttp.ClientError as error:
        raise _UnreachableError(
            f"cannot reach {arguments.url}: {type(error).__name__}: {error}"
        ) from None
    except TimeoutError:
        raise CommandError(
            f"no answer from {arguments.url}; what was asked may still be under way"
        ) from None
    return Answer(status, _parse(raw))


def _parse(raw: bytes) -> dict[str, Any]:
    """The answer as JSON; a proxy's HTML error page becomes a detail line."""
    try:
        document = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"detail": raw[:200].decode(errors="replace")}
    return document if isinstance(document, dict) else {"results": document}


def print_json(document: Any, out: TextIO) -> None:
    out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows under the first (the header), columns padded; the last column is not padded."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def complain(text: str) -> None:
    print(f"conveyor: {text}", file=sys.stderr)  # noqa: T201 - a CLI reports on stderr


def finish(
    arguments: argparse.Namespace,
    answer: Answer,
    out: TextIO,
    render: Callable[[dict[str, Any], TextIO], None],
) -> int:
    """The exit code of an answered request, having printed it: the problem, JSON, or `render`."""
    if answer.failed:
        complain(answer.problem_line())
        return EXIT_ANSWERED_ERROR
    if arguments.json:
        print_json(answer.document, out)
    else:
        render(answer.document, out)
    return 0
