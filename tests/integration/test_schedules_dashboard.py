"""The dashboard's schedules panel in a real headless Chromium."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, expect

from consumers import Event
from service.schedules import load_schedules
from tests.conftest import StartConveyor, subscription
from tests.integration.test_dashboard_browser import (  # the same browser and login
    TOKEN,
    browser,  # noqa: F401 - a fixture
    open_dashboard,
)


async def test_the_panel_lists_each_schedule_and_its_last_event(
    start_conveyor: StartConveyor,
    browser: Browser,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    async def take(_event: Event) -> None:
        return None

    path = tmp_path / "schedules.toml"
    path.write_text(
        '[[schedules]]\nname = "pulse"\nevery = "1s"\ntype = "tick.pulse"\n'
        '[[schedules]]\nname = "nightly"\ncron = "0 2 * * *"\ntimezone = "Europe/Berlin"\n'
        'type = "billing.reconcile"\n'
    )
    conveyor = await start_conveyor(
        (subscription("pulses", ("tick.*",), take),),
        admin_tokens=(("ops", TOKEN),),
        schedules=load_schedules(path),
    )
    page = await open_dashboard(browser, conveyor)
    rows = page.locator("#schedules tbody tr")
    await expect(rows).to_have_count(2, timeout=15_000)
    pulse, nightly = rows.nth(0), rows.nth(1)
    await expect(pulse.locator("td").nth(0)).to_have_text("pulse")
    await expect(pulse.locator("td").nth(1)).to_have_text("every 1s")
    # The panel polls every 5 s: a tick's event has succeeded by one of the next polls.
    await expect(pulse.locator("td").nth(3)).to_have_text("succeeded", timeout=20_000)
    await expect(nightly.locator("td").nth(1)).to_have_text("0 2 * * * (Europe/Berlin)")
    await expect(nightly.locator("td").nth(2)).to_have_text("-")
    await expect(nightly.locator("td").nth(3)).to_have_text("never fired")
    await page.close()
