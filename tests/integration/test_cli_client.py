"""`conveyor status` and `conveyor subscriptions` against a live conveyor."""

from __future__ import annotations

import io
from pathlib import Path

import orjson

from consumers import Event, PermanentError
from service.cli.client import EXIT_ANSWERED_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, run_client
from service.cli.main import build_parser
from tests.conftest import Running, StartConveyor, subscription
from tests.support.recorder import Recorder

TOKEN = "ops-token-0123456789"


async def conveyor_cli(conveyor: Running | None, *argv: str) -> tuple[int, str]:
    url = str(conveyor.client.make_url("/")) if conveyor else "http://127.0.0.1:9"
    environ = {"CONVEYOR_URL": url}
    if conveyor is not None:
        environ |= {
            "CONVEYOR_AMQP_URL": conveyor.settings.amqp_url,
            "CONVEYOR_NAMESPACE": conveyor.settings.namespace,
        }
    arguments = build_parser(environ).parse_args(list(argv))
    out = io.StringIO()
    code = await run_client(arguments, out)
    return code, out.getvalue()


async def test_status_prints_each_subscription_and_json_on_request(
    start_conveyor: StartConveyor,
) -> None:
    async def refuse(_event: object) -> None:
        raise PermanentError("card declined")

    conveyor = await start_conveyor(
        (subscription("audit", ("pay.*",), Recorder()), subscription("charge", ("pay.*",), refuse))
    )
    assert (await conveyor.post({"type": "pay.now", "id": "p/1", "source": "/pay"})).status == 202

    code, text = await conveyor_cli(conveyor, "status", "p/1", "--wait", "10s")
    json_code, json_text = await conveyor_cli(conveyor, "status", "p/1", "--json")

    assert code == json_code == 0
    lines = text.splitlines()
    assert lines[0] == "p/1 (source /pay, type pay.now): dead-lettered"
    assert lines[1].split()[:4] == ["audit", "succeeded", "attempts", "1"]
    assert lines[2].split()[:4] == ["charge", "dead-lettered", "attempts", "1"]
    assert lines[3].strip() == "last error: PermanentError: card declined"
    assert orjson.loads(json_text)["subscriptions"]["charge"]["state"] == "dead-lettered"


async def test_errors_and_an_unreachable_service_have_their_own_exit_codes(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor(admin_tokens=(("ops", TOKEN),))

    unknown, _ = await conveyor_cli(conveyor, "status", "nope")
    denied, _ = await conveyor_cli(conveyor, "subscriptions", "--token", "wrong-token-012345")
    unreachable, _ = await conveyor_cli(None, "status", "x")

    assert unknown == denied == EXIT_ANSWERED_ERROR
    assert unreachable == EXIT_UNREACHABLE


async def test_subscriptions_prints_a_table_of_queue_counts(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), admin_tokens=(("ops", TOKEN),)
    )

    code, text = await conveyor_cli(conveyor, "subscriptions", "--token", TOKEN)

    assert code == 0
    header, row = text.splitlines()
    assert header.split() == ["NAME", "EVENTS", "READY", "CONSUMERS", "RETRYING", "DEAD", "HANDLER"]
    assert row.split() == ["orders", "order.*", "0", "1", "0", "0", "tests:orders"]


async def test_publish_over_http_and_amqp_reaches_the_handler(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("inbox", ("cli.*",), recorder),))
    batch = tmp_path / "batch.json"
    batch.write_bytes(
        orjson.dumps(
            [
                {"specversion": "1.0", "type": "cli.batch", "id": "b-1", "source": "/f"},
                {"specversion": "1.0", "type": "cli.batch", "id": "b-2", "source": "/f"},
            ]
        )
    )

    one, one_text = await conveyor_cli(
        conveyor, "publish", "cli.one", "--id", "h-1", "--data", '{"n": 1}', "--subject", "s-1"
    )
    many, many_text = await conveyor_cli(conveyor, "publish", "--file", str(batch))
    amqp, amqp_text = await conveyor_cli(
        conveyor,
        "publish",
        "cli.direct",
        "--id",
        "a-1",
        "--amqp",
        *("--data", '"hello"'),
    )

    assert (one, many, amqp) == (0, 0, 0)
    assert one_text == "h-1 /v1/events/h-1\n"
    assert many_text.split() == ["b-1", "/v1/events/b-1", "b-2", "/v1/events/b-2"]
    assert amqp_text == "a-1\n"
    events = {event.id: event for event in await recorder.wait_for(4)}
    assert events["h-1"].data == {"n": 1}
    assert events["h-1"].subject == "s-1"
    assert events["h-1"].source == "/conveyor-cli"
    assert events["a-1"].data == "hello"
    assert sorted(events) == ["a-1", "b-1", "b-2", "h-1"]


async def test_publish_refuses_a_bad_event_before_sending(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor()

    not_json, _ = await conveyor_cli(conveyor, "publish", "cli.x", "--data", "{oops")
    no_type, _ = await conveyor_cli(conveyor, "publish")
    no_file, _ = await conveyor_cli(conveyor, "publish", "--file", "/nonexistent.json")

    assert not_json == no_type == no_file == EXIT_USAGE


async def test_dlq_commands_list_show_replay_and_discard(
    start_conveyor: StartConveyor,
) -> None:
    opened = {"now": False}

    async def gate(event: Event) -> None:
        if not opened["now"]:
            raise PermanentError("closed")

    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), gate),), admin_tokens=(("ops", TOKEN),)
    )
    for event_id, event_type in (("q-1", "order.placed"), ("q-2", "order.paid")):
        await conveyor.post({"type": event_type, "id": event_id, "source": "/q"})
        await conveyor.status(f"/v1/events/{event_id}", wait="10s")
    admin = ("--token", TOKEN)

    listed_code, listed = await conveyor_cli(conveyor, "dlq", "ls", "orders", *admin)
    entry_id = listed.splitlines()[2].split()[0]  # under the summary line and the table header
    show_code, shown = await conveyor_cli(
        conveyor, "dlq", "show", "orders", entry_id, "--json", *admin
    )
    vague, _ = await conveyor_cli(conveyor, "dlq", "replay", "orders", *admin)
    opened["now"] = True
    replay_code, replayed = await conveyor_cli(
        conveyor, "dlq", "replay", "orders", "--type", "order.paid", "--json", *admin
    )
    discard_code, discarded = await conveyor_cli(
        conveyor, "dlq", "discard", "orders", "--all", "--json", *admin
    )

    assert (listed_code, show_code, replay_code, discard_code) == (0, 0, 0, 0)
    assert listed.splitlines()[0].endswith(": showing 2 of 2 entries")
    assert orjson.loads(shown)["event"]["id"] == "q-1"
    assert vague == EXIT_USAGE  # replay must say which entries
    assert orjson.loads(replayed)["replayed"] == 1
    assert orjson.loads(discarded)["discarded"] == 1
    _, after = await conveyor.status("/v1/events/q-2", wait="10s")
    assert after["subscriptions"]["orders"]["state"] == "succeeded"
