"""The dashboard in a real headless Chromium, after real events went through a real conveyor."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, async_playwright, expect

from consumers import Event, PermanentError
from tests.conftest import Running, StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.recorder import Gate, Recorder
from tests.support.waiting import eventually

TOKEN = "ops-token-0123456789"
API_KEY = "ingest-key-0123456789"
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
RED = "rgb(214, 69, 69)"
# Long, yet within what conveyor keeps of an error message (1,000 characters).
LONG_ERROR = "card declined by the issuer after " + " ".join(
    f"step-{n} of the authorisation dance" for n in range(20)
)


def need_chromium() -> None:
    if not CHROMIUM_FOUND:
        pytest.fail(
            f"the browser test needs Chromium at {CHROMIUM} (apt-get install chromium, or set "
            "CONVEYOR_TEST_CHROMIUM)",
            pytrace=False,
        )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    need_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def accept_dialogs(page: Page) -> None:
    async def accept(dialog: Dialog) -> None:
        await dialog.accept()

    page.on("dialog", lambda dialog: asyncio.ensure_future(accept(dialog)))


async def open_dashboard(browser: Browser, conveyor: Running) -> Page:
    page = await browser.new_page()
    await page.goto(str(conveyor.client.make_url("/")))
    await page.fill("#token", TOKEN)
    await page.click("#login-form button")
    return page


async def dead_letter(conveyor: Running, *event_ids: str, event_type: str = "order.placed") -> None:
    for event_id in event_ids:
        await conveyor.post({"type": event_type, "id": event_id, "source": "/shop"})
    for event_id in event_ids:
        _, status = await conveyor.status(f"/v1/events/{event_id}", wait="10s")
        assert status["state"] == "dead-lettered"


async def test_dashboard_renders_subscriptions_and_a_replay_click_moves_messages_back(
    start_conveyor: StartConveyor,
) -> None:
    need_chromium()
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
            # A wrong token says so, and the prompt stays for another try.
            await page.fill("#token", "not-the-token-0123456789")
            await page.click("#login-form button")
            await expect(page.locator("#login-error")).to_be_visible()
            await expect(page.locator("#login-error")).to_contain_text(
                "refused (403): this token is not an admin token"
            )
            await expect(page.locator("#login")).to_be_visible()
            await expect(page.locator("#overview")).to_be_hidden()  # nothing behind a bad token
            await page.fill("#token", TOKEN)
            await page.click("#login-form button")
            card = page.locator('[data-subscription="orders"]')
            await expect(card.locator("h2")).to_have_text("orders")
            await expect(card.locator(".dead-count")).to_have_text("2")
            await expect(card.locator(".dead-count")).to_have_css("color", RED)
            await expect(card.locator(".retrying-count")).to_have_text("0")
            await expect(card.locator(".retrying-count")).not_to_have_css("color", RED)
            await expect(card.locator("ul.failures li").first).to_contain_text("gate closed")
            await expect(page.locator("#broker")).to_have_text("broker up")
            await expect(page.locator("#login")).to_be_hidden()

            gate.open = True

            async def accept(dialog: Dialog) -> None:
                await dialog.accept()

            page.once("dialog", lambda dialog: asyncio.ensure_future(accept(dialog)))
            await card.locator("button.replay").click()
            await expect(card.locator(".replayed")).to_have_text("replayed 2")
            await expect(card.locator(".dead-count")).to_have_text("0")
            # Zero dead letters is nothing to look at: not red.
            await expect(card.locator(".dead-count")).not_to_have_css("color", RED)
        finally:
            await browser.close()

    handled = await gate.handled.wait_for(2)
    assert sorted(event.id for event in handled) == ["d-1", "d-2"]


async def expect_detail_of_d1(detail: Locator) -> None:
    """The entry's headers as conveyor wrote them: reason, error, attempts, times, traceback."""
    await expect(detail.locator(".field-reason")).to_have_text("permanent-error")
    await expect(detail.locator(".field-error-class")).to_have_text("PermanentError")
    await expect(detail.locator(".field-error-message")).to_have_text(
        "order.placed refused: gate closed"
    )
    await expect(detail.locator(".field-attempts")).to_have_text("1")
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
    await expect(detail.locator(".field-first-failure")).to_have_text(rfc3339)
    await expect(detail.locator(".field-last-failure")).to_have_text(rfc3339)
    traceback = detail.locator("ol.traceback li")
    # The header keeps the last 2000 characters: the first line is the start or marked as cut.
    await expect(traceback.first).to_have_text(
        re.compile(r"^(Traceback \(most recent call last\):|\u2026.+)$")
    )
    await expect(traceback.last).to_contain_text("PermanentError: order.placed refused")
    assert await traceback.count() > 2  # one line per line, not one block


async def test_one_dead_letter_is_shown_replayed_and_discarded_and_a_filter_discards_by_reason(
    start_conveyor: StartConveyor, namespace: Namespace, browser: Browser
) -> None:
    gate = Gate()
    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), gate),), admin_tokens=(("ops", TOKEN),)
    )
    await dead_letter(conveyor, "d-1", "d-2")
    # Markup in what a client sent is shown as text, never run as markup.
    await dead_letter(conveyor, "d-3", event_type="order.<b>bold</b>")
    # Not a CloudEvent at all: dead-lettered as malformed.
    await namespace.publish_raw(b"not an event", routing_key="order.raw", message_id="raw-1")
    queue = namespace.topology.dead_letter_queue("orders")

    async def four_dead_letters() -> bool:
        return await namespace.depth(queue) == 4

    await eventually(four_dead_letters, what="the malformed message in the dead-letter queue")

    page = await open_dashboard(browser, conveyor)
    accept_dialogs(page)
    card = page.locator('[data-subscription="orders"]')
    await expect(card.locator(".dead-count")).to_have_text("4")
    await card.locator("button.dlq-toggle").click()
    entries = card.locator("ul.dlq-entries li")
    await expect(entries).to_have_count(4)
    await expect(card.locator(".dlq-note")).to_have_text("4 entries")
    await expect(entries.filter(has_text="d-3")).to_contain_text("order.<b>bold</b>")
    await expect(card.locator("ul.dlq-entries b")).to_have_count(0)

    first = entries.filter(has_text="d-1 (order.placed)")
    await first.locator(".dlq-show").click()
    await expect_detail_of_d1(card.locator(".dlq-detail"))

    gate.open = True
    await first.locator(".dlq-replay").click()
    await expect(card.locator(".dlq-note")).to_have_text("replayed 1")
    await expect(entries).to_have_count(3)
    await expect(entries.filter(has_text="d-1 (")).to_have_count(0)
    assert [event.id for event in await gate.handled.wait_for(1)] == ["d-1"]

    await entries.filter(has_text="d-2 (").locator(".dlq-discard").click()
    await expect(card.locator(".dlq-note")).to_have_text("discarded 1")
    await expect(entries).to_have_count(2)

    await card.locator("select.dlq-reason").select_option("malformed")
    await card.locator("button.dlq-discard-matching").click()
    await expect(card.locator(".dlq-note")).to_have_text("discarded 1")
    await expect(entries).to_have_count(1)
    await expect(entries.first).to_contain_text("d-3 (")

    # The last one, replayed: it arrives after d-2 would have, had the discard replayed it.
    await entries.first.locator(".dlq-replay").click()
    await expect(card.locator(".dlq-note")).to_have_text("replayed 1")
    await expect(card.locator(".dead-count")).to_have_text("0")
    handled = await gate.handled.wait_for(2)
    assert [event.id for event in handled] == ["d-1", "d-3"]
    assert await namespace.depth(queue) == 0


async def fail_long(event: Event) -> None:
    raise PermanentError(f"{event.id}: {LONG_ERROR}")


async def admin_get(conveyor: Running, path: str) -> Any:
    response = await conveyor.client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200, await response.text()
    return await response.json()


async def expect_ingest_strip(page: Page, samples: int) -> None:
    """What the ingress accepted, and what it refused by reason, with the rate's history."""
    strip = page.locator("#ingest")
    await expect(strip.locator(".accepted-total")).to_have_text("4 accepted since start")
    await expect(strip.locator(".accepted-rate")).to_contain_text("accepted/s")
    invalid = strip.locator('li[data-reason="invalid-event"]')
    await expect(invalid).to_contain_text("invalid-event: 1 (")
    await expect(invalid).to_have_css("color", RED)
    assert int(await strip.locator("svg").get_attribute("data-points") or "0") >= samples


async def expect_a_long_error_on_one_line(page: Page) -> None:
    """One line, cut with an ellipsis, the whole text on hover; zero dead letters not red."""
    payments = page.locator('[data-subscription="payments"]')
    await expect(payments.locator(".dead-count")).to_have_text("1")
    await expect(payments.locator(".dead-count")).to_have_css("color", RED)
    orders = page.locator('[data-subscription="orders"]')
    await expect(orders.locator(".dead-count")).to_have_text("0")
    await expect(orders.locator(".dead-count")).not_to_have_css("color", RED)
    failure = payments.locator("ul.failures li").first
    await expect(failure).to_have_attribute("title", re.compile(re.escape(LONG_ERROR) + "$"))
    shape = await failure.evaluate(
        "node => [getComputedStyle(node).textOverflow, getComputedStyle(node).whiteSpace,"
        " node.scrollWidth > node.clientWidth]"
    )
    assert shape == ["ellipsis", "nowrap", True]
    list_fits = await payments.locator("ul.failures").evaluate(
        "node => node.scrollHeight <= node.clientHeight"
    )
    assert list_fits


async def expect_lookups(page: Page) -> None:
    """An event's status per subscription (with the admin token: API keys are set)."""
    await page.fill("#lookup-id", "p-1")
    await page.click("#lookup-form button")
    row = page.locator('#lookup-result tr[data-lookup-subscription="payments"]')
    await expect(row.locator(".lookup-state")).to_have_text("dead-lettered")
    await expect(row.locator(".lookup-error")).to_contain_text("PermanentError: p-1: card declined")
    await expect(page.locator(".lookup-summary")).to_have_text(
        "p-1 (payment.taken) from /shop: dead-lettered"
    )
    await page.fill("#lookup-id", "o-2")
    await page.click("#lookup-form button")
    row = page.locator('#lookup-result tr[data-lookup-subscription="orders"]')
    await expect(row.locator(".lookup-state")).to_have_text("succeeded")
    await expect(page.locator("#lookup-result tr[data-lookup-subscription]")).to_have_count(1)
    await page.fill("#lookup-id", "never-sent")
    await page.click("#lookup-form button")
    await expect(page.locator(".lookup-note")).to_contain_text("never-sent: no event with this id")


async def test_history_ingest_strip_lookup_long_errors_and_favicon(
    start_conveyor: StartConveyor, browser: Browser
) -> None:
    orders = Recorder()
    conveyor = await start_conveyor(
        (
            subscription("orders", ("order.*",), orders),
            subscription("payments", ("payment.*",), fail_long),
        ),
        admin_tokens=(("ops", TOKEN),),
        api_keys=frozenset({API_KEY}),
        history_interval=0.2,
    )
    ingest = {"Authorization": f"Bearer {API_KEY}"}
    for event in (
        {"type": "order.placed", "id": "o-1", "source": "/shop"},
        {"type": "order.placed", "id": "o-2", "source": "/shop"},
        {"type": "order.placed", "id": "o-3", "source": "/shop"},
        {"type": "payment.taken", "id": "p-1", "source": "/shop"},
    ):
        assert (await conveyor.client.post("/v1/events", json=event, headers=ingest)).status == 202
    refused = await conveyor.client.post("/v1/events", json={"id": "x"}, headers=ingest)
    assert refused.status == 400
    for event_id, state in (("o-1", "succeeded"), ("o-3", "succeeded"), ("p-1", "dead-lettered")):
        answer = await conveyor.client.get(f"/v1/events/{event_id}?wait=10s", headers=ingest)
        assert (await answer.json())["state"] == state

    # The server's ring has some samples, among them the events just handled.
    async def history_with_the_events() -> bool:
        samples = (await admin_get(conveyor, "/v1/admin/dashboard/history"))["samples"]
        handled = sum(s["subscriptions"]["orders"]["handled_per_second"] for s in samples)
        return len(samples) >= 10 and handled > 0  # two seconds of samples

    await eventually(history_with_the_events, what="samples in the rate history")
    before = len((await admin_get(conveyor, "/v1/admin/dashboard/history"))["samples"])

    page = await open_dashboard(browser, conveyor)
    orders_card = page.locator('[data-subscription="orders"]')
    await expect(orders_card.locator("h2")).to_have_text("orders")
    # At the first render already: the sparkline holds the server's past, with the events in it.
    spark = orders_card.locator(".rate svg")
    assert int(await spark.get_attribute("data-points") or "0") >= before
    heights = [
        float(point.split(",")[1])
        for point in (await spark.locator("polyline").get_attribute("points") or "").split()
    ]
    assert min(heights) < 34  # above the baseline: a nonzero rate

    await expect_ingest_strip(page, before)
    await expect_a_long_error_on_one_line(page)
    await expect_lookups(page)
    icon = await page.request.get(str(conveyor.client.make_url("/favicon.ico")))  # no token
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert (await icon.body()).startswith(b"<svg")
    assert sorted(event.id for event in orders.events) == ["o-1", "o-2", "o-3"]
    assert orjson.loads(await refused.read())["type"] == "urn:conveyor:problem:invalid-event"
