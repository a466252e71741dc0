"""GET /docs: Swagger UI from the package, under a strict Content-Security-Policy, rendering
the process's own OpenAPI document in a real Chromium."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, ConsoleMessage, async_playwright, expect

from service import Role
from tests.conftest import Running, StartConveyor
from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS, need_chromium

ADMIN_TOKEN = "docs-admin-token-0123456789"


async def test_the_page_and_its_assets_are_served_from_the_package(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor()
    client = conveyor.client

    page = await client.get("/docs")
    bundle = await client.get("/docs/swagger-ui-bundle.js")
    stylesheet = await client.get("/docs/swagger-ui.css")
    starter = await client.get("/docs/api-docs.js")
    elsewhere = await client.get("/docs/..%2Fopenapi.json")
    unknown = await client.get("/docs/swagger-editor-bundle.js")  # in the package, not served

    assert page.status == 200
    assert page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assert "default-src 'self';" in policy
    html = await page.text()
    assert 'src="docs/swagger-ui-bundle.js"' in html
    assert "<script>" not in html  # no inline script: the policy would refuse it
    assert bundle.status == 200
    assert bundle.content_type == "text/javascript"
    assert "SwaggerUIBundle" in (await bundle.text())[:2000]
    assert stylesheet.status == 200
    assert stylesheet.content_type == "text/css"
    assert starter.status == 200
    assert 'url: "openapi.json"' in await starter.text()
    for refused in (elsewhere, unknown):
        assert refused.status == 404
        assert refused.content_type == "application/problem+json"


async def test_chromium_renders_every_operation_of_the_served_document(
    start_conveyor: StartConveyor,
) -> None:
    need_chromium()
    full = await start_conveyor(admin_tokens=(("ops", ADMIN_TOKEN),))
    worker = await start_conveyor(role=Role.WORKER)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
        )
        try:
            for running in (full, worker):
                document = await (await running.client.get("/openapi.json")).json()
                problems = await _render(browser, running, _operations(document))

                # Nothing refused by the policy, nothing missing, nothing thrown.
                assert problems == []
        finally:
            await browser.close()


async def _render(
    browser: Browser, running: Running, operations: set[tuple[str, str]]
) -> list[str]:
    """Open /docs, wait for one block per operation and open the ingest's; what went wrong."""
    problems: list[str] = []
    page = await browser.new_page()
    page.on("console", lambda message: _note(message, problems))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.url}") if response.status >= 400 else None
        ),
    )
    await page.goto(str(running.client.make_url("/docs")))
    await expect(page.locator(".info .title")).to_contain_text("conveyor")
    await expect(page.locator(".opblock")).to_have_count(len(operations), timeout=20_000)
    await expect(page.locator("#operations-operations-asyncapi")).to_be_visible()
    if ("post", "/v1/events") in operations:
        ingest = page.locator(".opblock-post", has_text="/v1/events").first
        await ingest.locator(".opblock-summary").click()
        await expect(ingest.locator(".opblock-body")).to_be_visible()
    await page.close()
    return problems


def _note(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type == "error":
        problems.append(message.text)


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}
