"""`conveyor archive` against a live conveyor: the listing, one event, a replay's progress."""

from __future__ import annotations

import orjson

from tests.conftest import StartConveyor, subscription
from tests.support.cli import run_cli
from tests.support.recorder import Recorder

TOKEN = "ops-token-0123456789"
ADMIN = ("--token", TOKEN)


async def test_ls_show_and_replay_from_the_command_line(start_conveyor: StartConveyor) -> None:
    orders = Recorder()
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), orders),),
        archive=3600.0,
        archive_read_idle=1.0,
        admin_tokens=(("ops", TOKEN),),
    )
    for event_id, subject in (("k-1", "cart-1"), ("k-2", "cart-2")):
        document = {"type": "order.placed", "id": event_id, "source": "/cli", "subject": subject}
        assert await conveyor.post_status(document) == 202
    await orders.wait_for(2)

    listing = await run_cli(conveyor, "archive", "ls", "--since", "1h", *ADMIN)
    one = await run_cli(conveyor, "archive", "ls", "--since", "1h", "--subject", "cart-2", *ADMIN)
    shown = await run_cli(conveyor, "archive", "show", "k-1", "--since", "1h", *ADMIN)
    replayed = await run_cli(
        conveyor, "archive", "replay", "--since", "1h", "--to", "orders", "--rate", "50", *ADMIN
    )
    no_target = await run_cli(conveyor, "archive", "replay", "--since", "1h", *ADMIN)

    assert (listing.code, one.code, shown.code, replayed.code) == (0, 0, 0, 0)
    header, *rows, summary = listing.out.splitlines()
    assert header.split() == ["OFFSET", "ID", "TYPE", "SOURCE", "SUBJECT", "TIME", "SIZE"]
    assert [row.split()[1] for row in rows] == ["k-1", "k-2"]
    assert summary.startswith("2 events, ")
    assert [row.split()[1] for row in one.out.splitlines()[1:-1]] == ["k-2"]
    assert "subject:      cart-1" in shown.out
    last = replayed.out.splitlines()[-1]
    assert last.startswith("replay rp-")
    assert "done, scanned 2, matched 2, published 2" in last
    assert no_target.code == 2
    assert "--to SUBSCRIPTION" in no_target.err
    await orders.wait_for(4)
    as_json = await run_cli(conveyor, "archive", "replays", "--json", *ADMIN)
    assert [replay["published"] for replay in orjson.loads(as_json.out)["replays"]] == [2]
