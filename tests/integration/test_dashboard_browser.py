"""The dashboard in a real headless Chromium: it renders the subscriptions, and replay works."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from playwright.async_api import Dialog, async_playwright, expect

from tests.conftest import Running, StartConveyor, subscription
from tests.support.recorder import Gate

TOKEN = "ops-token-0123456789"
CHROMIUM = Path(os.environ.get("CONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FOUND = CHROMIUM.exists()
# Without the networking flags Chromium keeps calling home, which this closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def dead_letter(conveyor: Running, *event_ids: str) -> None:
    for event_id in event_ids:
        await conveyor.post({"type": "order.placed", "id": event_id, "source": "/shop"})
    for event_id in event_ids:
        _, status = await conveyor.status(f"/v1/events/{event_id}", wait="10s")
        assert status["state"] == "dead-lettered"


async def test_dashboard_renders_subscriptions_and_a_replay_click_moves_messages_back(
    start_conveyor: StartConveyor,
) -> None:
    if not CHROMIUM_FOUND:
        pytest.fail(
            f"the browser test needs Chromium at {CHROMIUM} (apt-get install chromium, or set "
            "CONVEYOR_TEST_CHROMIUM)",
            pytrace=False,
        )
    gate = Gate()
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), gate),), admin_tokens=(("ops", TOKEN),)
    )
    await dead_letter(conveyor, "d-1", "d-2")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
        )
        try:
            page = await browser.new_page()
            await page.goto(str(conveyor.client.make_url("/")))
            await page.fill("#token", TOKEN)
            await page.click("#login-form button")
            card = page.locator('[data-subscription="orders"]')
            await expect(card.locator("h2")).to_have_text("orders")
            await expect(card.locator(".dead-count")).to_have_text("2")
            await expect(card.locator("ul.failures li").first).to_contain_text("gate closed")
            await expect(page.locator("#broker")).to_have_text("broker up")

            gate.open = True

            async def accept(dialog: Dialog) -> None:
                await dialog.accept()

            page.once("dialog", lambda dialog: asyncio.ensure_future(accept(dialog)))
            await card.locator("button.replay").click()
            await expect(card.locator(".replayed")).to_have_text("replayed 2")
            await expect(card.locator(".dead-count")).to_have_text("0")
        finally:
            await browser.close()

    handled = await gate.handled.wait_for(2)
    assert sorted(event.id for event in handled) == ["d-1", "d-2"]
