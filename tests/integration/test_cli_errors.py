"""Mistakes on the command line get one line and exit code 2, naming what is wrong and never
echoing a password: bad `--url`s, bad batch entries, a store URL that cannot be parsed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.cli.client import EXIT_ANSWERED_ERROR, EXIT_USAGE
from tests.conftest import StartConveyor, subscription
from tests.support.cli import CliResult, cli_environ, run_cli, run_entry_point
from tests.support.namespace import Namespace
from tests.support.processes import free_port
from tests.support.recorder import Recorder

TOKEN = "ops-token-0123456789"
PASSWORD = "s3cret-pw-4711"


def _one_line_refusal(result: CliResult) -> str:
    assert result.code == EXIT_USAGE, result
    assert result.out == ""
    assert result.err.startswith("conveyor: ")
    assert result.err.count("\n") == 1, result.err  # one line: no traceback
    assert PASSWORD not in result.err
    return result.err


def _event(event_id: str, **attributes: object) -> dict[str, object]:
    return {"specversion": "1.0", "type": "cli.batch", "id": event_id, "source": "/f"} | attributes


async def test_a_bad_batch_entry_is_named_by_its_index_and_nothing_is_sent(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("inbox", ("cli.*",), recorder),))
    no_source = tmp_path / "no-source.json"
    no_source.write_bytes(orjson.dumps([_event("b-0"), _event("b-1", source=None), _event("b-2")]))
    not_object = tmp_path / "not-object.json"
    not_object.write_bytes(orjson.dumps([_event("c-0"), _event("c-1"), 5]))
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"[]")

    http = await run_cli(conveyor, "publish", "--file", str(no_source))
    amqp = await run_cli(conveyor, "publish", "--file", str(no_source), "--amqp")
    third = await run_cli(conveyor, "publish", "--file", str(not_object))
    nothing = await run_cli(conveyor, "publish", "--file", str(empty))
    sentinel = await run_cli(conveyor, "publish", "cli.sentinel", "--id", "sentinel")

    assert _one_line_refusal(http).startswith(f"conveyor: --file {no_source} entry 1: ")
    assert "source" in http.err
    assert _one_line_refusal(amqp) == http.err
    assert _one_line_refusal(third) == (
        f"conveyor: --file {not_object} entry 2: a structured event must be a JSON object\n"
    )
    assert _one_line_refusal(nothing) == f"conveyor: --file {empty}: an empty batch\n"
    # The sentinel, published last, is the only event that arrived: no batch was partly sent.
    assert sentinel.code == 0
    assert [event.id for event in await recorder.wait_for(1)] == ["sentinel"]


async def test_publish_prints_json_on_request(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("inbox", ("cli.*",), recorder),))
    batch = tmp_path / "batch.json"
    batch.write_bytes(orjson.dumps([_event("j-1"), _event("j-2")]))

    one = await run_cli(conveyor, "publish", "cli.one", "--id", "j-0", "--json")
    many = await run_cli(conveyor, "publish", "--file", str(batch), "--json")
    direct = await run_cli(conveyor, "publish", "cli.direct", "--id", "j-3", "--amqp", "--json")

    assert (one.code, many.code, direct.code) == (0, 0, 0)
    assert orjson.loads(one.out) == {"id": "j-0", "location": "/v1/events/j-0"}
    assert [entry["id"] for entry in orjson.loads(many.out)["results"]] == ["j-1", "j-2"]
    assert orjson.loads(direct.out) == {"published": ["j-3"]}
    assert sorted(event.id for event in await recorder.wait_for(4)) == ["j-0", "j-1", "j-2", "j-3"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://ops:{password}@127.0.0.1:{port}", "credentials do not go in the URL"),
        ("http://127.0.0.1:99999", "unparseable URL (a bad port or host?)"),
        ("http://127.0.0.1:0", "port 0 (ports are 1 to 65535)"),
        ("http://[::1:{port}", "unparseable URL"),
        ("ftp://127.0.0.1:{port}", "without http(s)://"),
        ("127.0.0.1:{port}", "without http(s)://"),
    ],
)
async def test_a_bad_url_is_one_line_and_exit_2_without_the_password(
    start_conveyor: StartConveyor, url: str, says: str
) -> None:
    conveyor = await start_conveyor(admin_tokens=(("ops", TOKEN),))
    port = conveyor.client.port
    bad = url.format(password=PASSWORD, port=port)
    environ = cli_environ(conveyor) | {"CONVEYOR_TOKEN": TOKEN}

    flag = await run_entry_point("dlq", "ls", "orders", "--url", bad, environ=environ)
    from_environment = await run_cli(
        conveyor, "subscriptions", environ={"CONVEYOR_URL": bad, "CONVEYOR_TOKEN": TOKEN}
    )
    good = await run_cli(
        conveyor, "subscriptions", "--url", f"http://127.0.0.1:{port}/", "--token", TOKEN
    )

    assert says in _one_line_refusal(flag)
    assert _one_line_refusal(flag).startswith("conveyor: --url (or $CONVEYOR_URL): ")
    assert _one_line_refusal(from_environment) == flag.err
    assert good.code == 0, good
    assert good.out.split()[0] == "NAME"


async def test_a_token_no_header_can_carry_is_refused(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(admin_tokens=(("ops", TOKEN),))

    refused = await run_cli(conveyor, "subscriptions", "--token", f"{TOKEN}\r\nX-Injected: 1")

    assert _one_line_refusal(refused).startswith("conveyor: --token (or $CONVEYOR_TOKEN): ")
    assert TOKEN not in refused.err


@pytest.mark.parametrize(
    ("store_url", "says"),
    [
        (f"postgresql://conveyor:{PASSWORD}@127.0.0.1:99999/test", "a port from 1 to 65535"),
        (
            f"postgresql://conveyor:{PASSWORD}@127.0.0.1:x/test",
            "a URL with one host and a numeric port",
        ),
        (f"postgresql://conveyor:{PASSWORD}@[::1/test", "a URL with one host and a numeric port"),
        ("sqlite:///", "sqlite:/// followed by a file path"),
        ("sqlite://var/conveyor.db", "sqlite:/// followed by a file path"),
    ],
)
async def test_serve_refuses_a_store_url_it_cannot_parse(
    namespace: Namespace, store_url: str, says: str
) -> None:
    environ = {
        "CONVEYOR_AMQP_URL": namespace.amqp_url,
        "CONVEYOR_NAMESPACE": namespace.name,
        "CONVEYOR_HTTP_HOST": "127.0.0.1",
        "CONVEYOR_HTTP_PORT": str(free_port()),
        "CONVEYOR_STORE_URL": store_url,
    }

    served = await run_entry_point("serve", environ=environ)

    assert _one_line_refusal(served) == (
        f"conveyor: CONVEYOR_STORE_URL: expected sqlite:///<path> or postgresql://... ({says})\n"
    )


async def test_entries_of_a_batch_the_ingress_refuses_are_named_by_index(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((subscription("inbox", ("cli.*",), recorder),))
    first = await run_cli(conveyor, "publish", "--file", _write(tmp_path, _event("k-1", data=1)))
    # The same id and source with other data: the ingress answers that entry 422, not the rest.
    batch = _write(tmp_path, [_event("k-2"), _event("k-1", data=2), _event("k-3")])

    mixed = await run_cli(conveyor, "publish", "--file", batch)

    assert first.code == 0
    assert mixed.code == EXIT_ANSWERED_ERROR
    assert mixed.out.split() == ["k-2", "/v1/events/k-2", "k-3", "/v1/events/k-3"]
    refused, summary = mixed.err.splitlines()
    assert refused.startswith(f"conveyor: --file {batch} entry 1 (id k-1): 422 ")
    assert summary == "conveyor: 1 of the 3 events were not accepted"
    events = await recorder.wait_for(3)
    assert sorted((event.id, event.data) for event in events) == [
        ("k-1", 1), ("k-2", None), ("k-3", None),
    ]  # fmt: skip


def _write(directory: Path, document: object) -> str:
    path = directory / f"events-{len(list(directory.iterdir()))}.json"
    path.write_bytes(orjson.dumps(document))
    return str(path)
