"""`conveyor status`, `cancel`, `subscriptions`, `schedules`, `dlq`, `archive` and `publish`:
talking to a running conveyor.

Human output by default, `--json` for scripts. Exit codes: 0 done, 1 the service answered with
an error (the problem's detail is printed), 2 a usage error (or an invalid event), 3 the service
(or the broker, for `publish --amqp`) could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from service.admin.dead_letter_routes import MAX_PAGE, MAX_RATE
from service.cli.archive import add_archive_command, archive_command
from service.cli.dead_letters import REASONS, dlq_command
from service.cli.http_client import (
    EXIT_ANSWERED_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    ask,
    check_connection_arguments,
    complain,
    finish,
    print_table,
)
from service.cli.publish import publish_command
from service.cli.text import printable

__all__ = [
    "EXIT_ANSWERED_ERROR",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "add_client_commands",
    "run_client",
]

DEFAULT_URL = "http://localhost:8080"
MAX_OFFSET = 10**9


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
    cancel = commands.add_parser(
        "cancel", parents=[common], help="cancel a delayed event that is not due yet"
    )
    cancel.add_argument("event_id")
    cancel.add_argument("--source", help="pick one when several sources used this id")
    commands.add_parser(
        "subscriptions", parents=[common], help="subscriptions with their queue counts (admin)"
    )
    commands.add_parser(
        "schedules",
        parents=[common],
        help="schedules with their last and next ticks and the last tick's event (admin)",
    )
    dlq = commands.add_parser(
        "dlq", parents=[common], help="dead letters of a subscription, or 'unrouted' (admin)"
    )
    dlq.add_argument("action", choices=("ls", "show", "replay", "discard"))
    dlq.add_argument("queue", help="a subscription name, or 'unrouted'")
    dlq.add_argument("entry", nargs="*", help="entry ids (show: one; replay/discard: these)")
    dlq.add_argument("--type", help="only events of this type")
    dlq.add_argument("--error-class", help="only failures of this class")
    dlq.add_argument("--reason", help=f"only this reason: {', '.join(REASONS)}")
    dlq.add_argument("--since", help="only failures at or after this RFC 3339 time")
    dlq.add_argument("--until", help="only failures before this RFC 3339 time")
    dlq.add_argument("--all", action="store_true", help="replay/discard: every entry")
    dlq.add_argument(
        "--rate",
        type=_bounded(float, 0, MAX_RATE, low_included=False),
        help=f"replay: at most this many per second (up to {MAX_RATE:g}; default 100)",
    )
    dlq.add_argument(
        "--offset",
        type=_bounded(int, 0, MAX_OFFSET),
        default=0,
        help="ls: skip this many matching entries",
    )
    dlq.add_argument(
        "--limit",
        type=_bounded(int, 1, MAX_PAGE),
        help=f"ls: show at most this many (default 100, up to {MAX_PAGE})",
    )
    add_archive_command(commands, common)
    publish = commands.add_parser(
        "publish",
        parents=[common],
        help="send an event over HTTP (default) or straight to RabbitMQ (--amqp)",
        description="Send an event built from arguments, or the CloudEvent(s) in --file "
        "(one structured event or a batch array).",
    )
    publish.add_argument("type", nargs="?", help="the event type (unless --file)")
    publish.add_argument("--data", help="the data, as JSON")
    publish.add_argument("--source", default="/conveyor-cli")
    publish.add_argument("--id", help="the event id (default: a new UUID)")
    publish.add_argument("--subject")
    publish.add_argument("--file", type=Path, help="a structured CloudEvent or a batch, as JSON")
    publish.add_argument(
        "--amqp",
        action="store_true",
        help="publish to RabbitMQ directly ($CONVEYOR_AMQP_URL, $CONVEYOR_NAMESPACE)",
    )
    publish.set_defaults(
        amqp_url=environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@localhost:5672/"),
        namespace=environ.get("CONVEYOR_NAMESPACE", "conveyor"),
    )


async def run_client(arguments: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        if not (arguments.command == "publish" and arguments.amqp):
            check_connection_arguments(arguments)
        match arguments.command:
            case "publish":
                return await publish_command(arguments, out)
            case "dlq":
                return await dlq_command(arguments, out)
            case "archive":
                return await archive_command(arguments, out)
        method, path, query, printer = _request_for(arguments)
        answer = await ask(arguments, method, path, query=query)
        return finish(arguments, answer, out, printer)
    except CommandError as failure:
        complain(str(failure))
        return failure.exit_code


Printer = Callable[[dict[str, Any], TextIO], None]


def _request_for(arguments: argparse.Namespace) -> tuple[str, str, dict[str, str], Printer]:
    """The one request of a simple client command, and how its answer is printed."""
    match arguments.command:
        case "status":
            path = f"/v1/events/{quote(arguments.event_id, safe='')}"
            query = {
                key: value
                for key, value in (("source", arguments.source), ("wait", arguments.wait))
                if value
            }
            return "GET", path, query, _print_status
        case "cancel":
            path = f"/v1/events/{quote(arguments.event_id, safe='')}"
            query = {"source": arguments.source} if arguments.source else {}
            return "DELETE", path, query, _print_cancelled
        case "schedules":
            return "GET", "/v1/admin/schedules", {}, _print_schedules
    return "GET", "/v1/admin/subscriptions", {}, _print_subscriptions


def _print_cancelled(document: dict[str, Any], out: TextIO) -> None:
    out.write(f"{document['id']} (source {document['source']}): cancelled\n")


def _print_status(document: dict[str, Any], out: TextIO) -> None:
    due = f", due {document['due']}" if document.get("due") else ""
    out.write(
        f"{document['id']} (source {document['source']}, type {document['type']}): "
        f"{document['state']}{'' if document['done'] else ', not done yet'}{due}\n"
    )
    for name, entry in document["subscriptions"].items():
        line = f"  {name:<24} {entry['state']:<14} attempts {entry['attempts']}"
        if entry.get("next_attempt_at"):
            line += f"  next attempt {entry['next_attempt_at']}"
        if entry.get("finished_at"):
            line += f"  finished {entry['finished_at']}"
        if entry.get("last_error"):
            error = entry["last_error"]
            text = printable(f"{error['class']}: {error['message']}")
            line += f"\n  {'':<24} last error: {text}"
        for earlier in entry.get("history", ()):
            reason = f" ({printable(earlier['reason'])})" if earlier.get("reason") else ""
            line += f"\n  {'':<24} before a replay: {earlier['state']}{reason} at {earlier['at']}"
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
    print_table(rows, out)
    # An ordered subscription's READY and CONSUMERS add up its partitions: each one here.
    partitions = [("SUBSCRIPTION", "KEY", "PARTITION", "READY", "CONSUMERS")]
    for entry in document["subscriptions"]:
        ordering = entry.get("ordering") or {"queues": ()}
        partitions.extend(
            (
                entry["name"],
                ordering["by"],
                queue["name"],
                str(queue.get("messages", "?")),
                str(queue.get("consumers", "?")),
            )
            for queue in ordering["queues"]
        )
    if len(partitions) > 1:
        out.write("\n")
        print_table(partitions, out)


def _print_schedules(document: dict[str, Any], out: TextIO) -> None:
    rows = [("NAME", "WHEN", "TYPE", "LAST TICK", "ITS EVENT", "NEXT TICK")]
    for entry in document["schedules"]:
        when = (
            f"{entry['cron']} ({entry['timezone']})"
            if "cron" in entry
            else f"every {entry['every']}"
        )
        last = entry["last_event"]
        outcome = "-" if last is None else last["state"] or "status expired"
        if entry.get("failing_here"):
            outcome = "retrying: " + printable(entry["failing_here"])
        rows.append(
            (
                entry["name"],
                when,
                entry["type"],
                entry["last_tick"] or "never",
                outcome,
                entry["next_tick"],
            )
        )
    print_table(rows, out)


def _bounded(
    kind: Callable[[str], float], low: float, high: float, *, low_included: bool = True
) -> Callable[[str], Any]:
    """An argparse type: a number from `low` to `high` (argparse exits 2 naming the option)."""
    low_text = f"{low:g} or more" if low_included else f"above {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, {low_text}") from None
        if not (low <= value if low_included else low < value) or value > high:
            raise argparse.ArgumentTypeError(f"expected {low_text}, up to {high:g}")
        return value

    return parse
