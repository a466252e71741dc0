"""The dashboard's archive card in a real headless Chromium: its span, and a replay form run."""

from __future__ import annotations

import time
from datetime import datetime

from playwright.async_api import Browser, expect

from tests.conftest import StartConveyor, subscription
from tests.integration.test_dashboard_browser import (  # noqa: F401 - `browser` is a fixture
    TOKEN,
    browser,
    open_dashboard,
)
from tests.support.recorder import Recorder


async def test_the_card_shows_the_span_and_replays_a_window_into_one_subscription(
    start_conveyor: StartConveyor,
    browser: Browser,  # noqa: F811 - the fixture imported above
) -> None:
    orders = Recorder()
    since = time.time() - 1
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), orders),),
        archive=3600.0,
        archive_read_idle=1.0,
        admin_tokens=(("ops", TOKEN),),
    )
    for event_id in ("w-1", "w-2"):
        assert (
            await conveyor.post_status({"type": "order.x", "id": event_id, "source": "/w"}) == 202
        )
    await orders.wait_for(2)

    page = await open_dashboard(browser, conveyor)
    card = page.locator("#archive")
    await expect(card).to_be_visible()
    await expect(page.locator("#archive-oldest")).to_contain_text("(w-1)")
    await expect(page.locator("#archive-newest")).to_contain_text("(w-2)")
    await expect(page.locator("#archive-to option")).to_have_text(["orders"])
    # datetime-local is the browser's local time, as Python's fromtimestamp here.
    local = datetime.now().astimezone().tzinfo
    start = datetime.fromtimestamp(int(since), tz=local).strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("#archive-since", start)
    await page.click("#archive-form button[type=submit]")

    await expect(page.locator("#archive-progress")).to_contain_text(
        "into orders: done, scanned 2, matched 2, published 2", timeout=20000
    )
    await orders.wait_for(4)
    assert sorted(orders.ids()) == ["w-1", "w-1", "w-2", "w-2"]


async def test_the_card_stays_hidden_with_the_archive_off(
    start_conveyor: StartConveyor,
    browser: Browser,  # noqa: F811 - the fixture imported above
) -> None:
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), Recorder()),), admin_tokens=(("ops", TOKEN),)
    )

    page = await open_dashboard(browser, conveyor)

    await expect(page.locator('[data-subscription="orders"] h2')).to_have_text("orders")
    script = await conveyor.client.get("/archive.js")
    assert script.status == 200
    await expect(page.locator("#archive")).to_be_hidden()
