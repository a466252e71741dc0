"""`conveyor status` and `conveyor subscriptions`: asking a running conveyor over HTTP.

Human output by default, `--json` for scripts. Exit codes: 0 done, 1 the service answered with
an error (the problem's detail is printed), 2 a usage error, 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import orjson

__all__ = ["EXIT_ANSWERED_ERROR", "EXIT_UNREACHABLE", "add_client_commands", "run_client"]

EXIT_ANSWERED_ERROR = 1
EXIT_UNREACHABLE = 3
DEFAULT_URL = "http://localhost:8080"
_TIMEOUT_SLACK_SECONDS = 10.0


def add_client_commands(commands: Any, environ: Mapping[str, str]) -> None:
    """Register the client subcommands on the `conveyor` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=environ.get("CONVEYOR_URL", DEFAULT_URL),
        help="the running conveyor (default: $CONVEYOR_URL or %(default)s)",
    )
    common.add_argument(
        "--token",
        default=environ.get("CONVEYOR_TOKEN"),
        help="Bearer token: an API key, or an admin token for admin commands ($CONVEYOR_TOKEN)",
    )
    common.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    status = commands.add_parser(
        "status", parents=[common], help="where an accepted event stands, per subscription"
    )
    status.add_argument("event_id")
    status.add_argument("--source", help="pick one when several sources used this id")
    status.add_argument("--wait", help="wait up to this long for it to finish, e.g. 10s")
    commands.add_parser(
        "subscriptions", parents=[common], help="subscriptions with their queue counts (admin)"
    )


async def run_client(arguments: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if arguments.command == "status":
        path = f"/v1/events/{quote(arguments.event_id, safe='')}"
        query = {k: v for k, v in (("source", arguments.source), ("wait", arguments.wait)) if v}
        render = _print_status
    else:
        path, query, render = "/v1/admin/subscriptions", {}, _print_subscriptions
    headers = {"Authorization": f"Bearer {arguments.token}"} if arguments.token else {}
    timeout = aiohttp.ClientTimeout(total=60 + _TIMEOUT_SLACK_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(arguments.url.rstrip("/") + path, params=query, headers=headers) as reply,
        ):
            status, body = reply.status, await reply.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        print(f"conveyor: cannot reach {arguments.url}: {error}", file=sys.stderr)  # noqa: T201 - a CLI
        return EXIT_UNREACHABLE
    document = orjson.loads(body) if body else {}
    if status >= 400:  # noqa: PLR2004 - an error answer
        detail = document.get("detail", body.decode(errors="replace"))
        print(f"conveyor: {status} {document.get('title', '')}: {detail}", file=sys.stderr)  # noqa: T201 - a CLI
        return EXIT_ANSWERED_ERROR
    if arguments.json:
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render(document, out)
    return 0


def _print_status(document: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"{document['id']} (source {document['source']}, type {document['type']}): "
        f"{document['state']}{'' if document['done'] else ', not done yet'}\n"
    )
    for name, entry in document["subscriptions"].items():
        line = f"  {name:<24} {entry['state']:<14} attempts {entry['attempts']}"
        if entry.get("next_attempt_at"):
            line += f"  next attempt {entry['next_attempt_at']}"
        if entry.get("finished_at"):
            line += f"  finished {entry['finished_at']}"
        if entry.get("last_error"):
            error = entry["last_error"]
            line += f"\n  {'':<24} last error: {error['class']}: {error['message']}"
        out.write(line + "\n")


def _print_subscriptions(document: dict[str, Any], out: TextIO) -> None:
    rows = [("NAME", "EVENTS", "READY", "CONSUMERS", "RETRYING", "DEAD", "HANDLER")]
    for entry in document["subscriptions"]:
        queue = entry["queue"]
        rows.append(
            (
                entry["name"],
                ",".join(entry["events"]),
                str(queue.get("messages", "?")),
                str(queue.get("consumers", "?")),
                str(sum(tier.get("messages", 0) for tier in entry["retry"]["tiers"])),
                str(entry["dead_letter"].get("messages", "?")),
                entry["handler"],
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")
