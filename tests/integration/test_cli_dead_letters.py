"""`conveyor dlq` against a live conveyor: readable by default, counts that agree with the page,
tracebacks as lines, and filters that could never match refused before anything is asked."""

from __future__ import annotations

import orjson

from consumers import Event, PermanentError
from consumers.dead_letter import DeadLetterReason
from service.cli.client import EXIT_USAGE
from tests.conftest import Running, StartConveyor, subscription
from tests.support.cli import run_cli
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
ADMIN = ("--token", TOKEN)


def _refuse_card(event: Event) -> None:
    raise PermanentError(f"card declined for {event.id}")


async def _refusing(event: Event) -> None:
    _refuse_card(event)


async def _dead_letters(start_conveyor: StartConveyor, types: list[str]) -> Running:
    """A conveyor whose `orders` subscription dead-letters every event, one of each type."""
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), _refusing),), admin_tokens=(("ops", TOKEN),)
    )
    for number, event_type in enumerate(types):
        event_id = f"d-{number}"
        await conveyor.post({"type": event_type, "id": event_id, "source": "/d", "data": {}})
        _, status = await conveyor.status(f"/v1/events/{event_id}", wait="10s")
        assert status["subscriptions"]["orders"]["state"] == "dead-lettered"
    return conveyor


async def test_ls_says_how_many_it_shows_of_how_many(start_conveyor: StartConveyor) -> None:
    conveyor = await _dead_letters(start_conveyor, ["order.placed"] * 4 + ["order.paid"] * 2)

    first = await run_cli(conveyor, "dlq", "ls", "orders", "--limit", "2", *ADMIN)
    last = await run_cli(conveyor, "dlq", "ls", "orders", "--offset", "4", "--limit", "2", *ADMIN)
    paid = await run_cli(conveyor, "dlq", "ls", "orders", "--type", "order.paid", *ADMIN)
    past = await run_cli(conveyor, "dlq", "ls", "orders", "--offset", "9", *ADMIN)
    as_json = await run_cli(conveyor, "dlq", "ls", "orders", "--limit", "2", "--json", *ADMIN)

    assert (first.code, last.code, paid.code, past.code, as_json.code) == (0, 0, 0, 0, 0)
    queue = f"{conveyor.settings.namespace}.orders.dlq"
    summary, header, *rows = first.out.splitlines()
    assert summary == f"{queue}: showing 2 of 6 entries (1-2; next page: --offset 2)"
    assert header.split() == [
        "ID", "EVENT", "TYPE", "REASON", "ATTEMPTS", "LAST", "FAILURE", "ERROR",
    ]  # fmt: skip
    assert len(rows) == 2
    assert rows[0].split()[2:5] == ["order.placed", "permanent-error", "1"]
    assert "PermanentError: card declined for" in rows[0]
    assert last.out.splitlines()[0] == f"{queue}: showing 2 of 6 entries (5-6)"
    assert paid.out.splitlines()[0] == (
        f"{queue}: showing 2 of 2 entries matching the filters, 6 in the queue"
    )
    assert {row.split()[2] for row in paid.out.splitlines()[2:]} == {"order.paid"}
    assert past.out.splitlines() == [
        f"{queue}: showing 0 of 6 entries (--offset 9 is past the last)"
    ]
    listing = orjson.loads(as_json.out)
    assert (listing["matching"], len(listing["entries"])) == (6, 2)


async def test_show_prints_the_entry_with_its_traceback_as_lines(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await _dead_letters(start_conveyor, ["order.placed"])
    listing = orjson.loads((await run_cli(conveyor, "dlq", "ls", "orders", "--json", *ADMIN)).out)
    entry_id = listing["entries"][0]["id"]

    shown = await run_cli(conveyor, "dlq", "show", "orders", entry_id, *ADMIN)
    as_json = await run_cli(conveyor, "dlq", "show", "orders", entry_id, "--json", *ADMIN)

    assert shown.code == as_json.code == 0
    lines = shown.out.splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines[:11]}
    assert fields["entry"] == entry_id
    assert fields["event"] == "d-0"
    assert fields["type"] == "order.placed"
    assert fields["reason"] == "permanent-error"
    assert fields["error"] == "PermanentError: card declined for d-0"
    assert fields["attempts"] == "1"
    # The traceback as the lines it is, indented under its label: no escaped newlines anywhere.
    trace = lines[lines.index("traceback:") + 1 :]
    # The header keeps the last 2000 characters: the cut start is marked.
    assert trace[0].startswith("  ...") or trace[0] == "  Traceback (most recent call last):"
    assert any(line.strip().startswith('File "') and "in _refuse_card" in line for line in trace)
    assert "  consumers.errors.PermanentError: card declined for d-0" in trace
    assert "\\n" not in shown.out
    assert "  x-conveyor-reason" in shown.out  # the headers, one a line
    assert orjson.loads(as_json.out)["headers"]["x-conveyor-reason"] == "permanent-error"


async def test_replay_and_discard_print_their_counts(start_conveyor: StartConveyor) -> None:
    conveyor = await _dead_letters(start_conveyor, ["order.placed", "order.paid", "order.paid"])
    listing = orjson.loads((await run_cli(conveyor, "dlq", "ls", "orders", "--json", *ADMIN)).out)
    placed = next(e["id"] for e in listing["entries"] if e["event"]["type"] == "order.placed")
    queue = listing["queue"]

    discarded = await run_cli(conveyor, "dlq", "discard", "orders", placed, "gone-1", *ADMIN)
    replayed = await run_cli(conveyor, "dlq", "replay", "orders", "--type", "order.paid", *ADMIN)

    assert (discarded.code, replayed.code) == (0, 0)
    assert discarded.out == f"{queue}: discarded 1, kept 2\n"
    assert discarded.err == f"conveyor: 1 of the given entry ids were not in {queue}\n"
    assert replayed.out == f"{queue}: replayed 2, kept 0\n"

    async def back_after_one_replay() -> bool:
        # The handler refuses them again: each is back, counted as replayed once.
        answer = await run_cli(conveyor, "dlq", "ls", "orders", "--json", *ADMIN)
        entries = orjson.loads(answer.out)["entries"]
        return sorted((e["event"]["id"], e["replays"]) for e in entries) == [("d-1", 1), ("d-2", 1)]

    await eventually(back_after_one_replay, what="the replayed events back in the DLQ")


async def test_filters_that_cannot_match_are_usage_errors_naming_the_valid_values(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await _dead_letters(start_conveyor, ["order.placed"])

    reason = await run_cli(conveyor, "dlq", "ls", "orders", "--reason", "nope", *ADMIN)
    replay_reason = await run_cli(conveyor, "dlq", "replay", "orders", "--reason", "nope", *ADMIN)
    type_ = await run_cli(conveyor, "dlq", "discard", "orders", "--type", "ordr.placed", *ADMIN)
    unrouted = await run_cli(
        conveyor, "dlq", "ls", "unrouted", "--reason", "permanent-error", *ADMIN
    )
    since = await run_cli(conveyor, "dlq", "ls", "orders", "--since", "yesterday", *ADMIN)
    empty = await run_cli(conveyor, "dlq", "ls", "orders", "--error-class", "", *ADMIN)
    known = await run_cli(
        conveyor, "dlq", "ls", "orders", "--reason", "permanent-error", "--type", "order.placed",
        *ADMIN,
    )  # fmt: skip

    for refused in (reason, replay_reason, type_, unrouted, since, empty):
        assert refused.code == EXIT_USAGE
        assert refused.out == ""
        assert refused.err.count("\n") == 1
    valid = ", ".join(reason.value for reason in DeadLetterReason)
    assert reason.err == f"conveyor: --reason: no dead letter has reason 'nope'; one of {valid}\n"
    assert "retries-exhausted, permanent-error, malformed" in valid
    assert "'ordr.placed'" in type_.err
    assert "it takes order.*" in type_.err
    assert "unrouted events carry no reason" in unrouted.err
    assert "RFC 3339" in since.err
    assert empty.err == "conveyor: --error-class: give a value (--all means all)\n"
    # Nothing was replayed or discarded: the entry is still there, and a known filter finds it.
    assert known.code == 0
    assert known.out.splitlines()[0].endswith(
        ": showing 1 of 1 entries matching the filters, 1 in the queue"
    )


async def test_unrouted_entries_list_with_no_reason_or_error(start_conveyor: StartConveyor) -> None:
    conveyor = await _dead_letters(start_conveyor, [])
    # Confirmed once the alternate exchange has put it in the unrouted queue.
    assert (
        await conveyor.post({"type": "invoice.sent", "id": "u-1", "source": "/b"})
    ).status == 202

    listed = await run_cli(conveyor, "dlq", "ls", "unrouted", "--type", "invoice.sent", *ADMIN)

    assert listed.code == 0
    summary, _header, row = listed.out.splitlines()
    assert summary.endswith(": showing 1 of 1 entries matching the filters, 1 in the queue")
    assert row.split()[1:] == ["u-1", "invoice.sent", "-", "-", "-", "-"]
