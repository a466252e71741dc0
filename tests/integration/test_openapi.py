"""Schemathesis against GET /openapi.json: no 5xx, answers as documented, valid requests accepted,
invalid ones refused, errors problem+json.

Schemathesis calls the in-process conveyor with `requests`, which blocks: it runs in a worker
thread while the test's event loop serves the requests.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import Role
from service.http.openapi_route import load_document
from service.http.status_route import MAX_WAIT_SECONDS
from service.settings import Settings, parse_duration
from tests.conftest import StartConveyor, subscription
from tests.support.recorder import Recorder

API_KEY = "openapi-ingest-key"
ADMIN_TOKEN = "openapi-admin-token-0123456789"
# Per operation and generation mode (17 operations, 13 with something to make invalid).
EXAMPLES = 25
# Long-polls are cut to this so the run stays short (test_status_api covers ?wait itself).
LONGEST_WAIT_SECONDS = 0.1
PROBLEM = "application/problem+json"
Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
SUBSCRIPTION = "fuzzed"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


def problem_details(_ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """Every 4xx and 5xx is RFC 9457 problem+json whose status is the HTTP status."""
    if response.status_code < 400 or case.path == "/readyz":  # readyz: a health document
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM, f"error answered as {content_type}"
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("status") == response.status_code, body
    assert str(body.get("type", "")).startswith("urn:conveyor:problem:"), body
    assert isinstance(body.get("title"), str), body
    assert body["title"], body
    assert isinstance(body.get("detail"), str), body


def _documented_wait() -> re.Pattern[str]:
    parameters = load_document()["paths"]["/v1/events/{event_id}"]["get"]["parameters"]
    (wait,) = [parameter for parameter in parameters if parameter["name"] == "wait"]
    return re.compile(wait["schema"]["pattern"])


DOCUMENTED_WAIT = _documented_wait()


def _short_wait(case: Case) -> Case:
    """A wait the document allows and the server takes, cut short: what is valid stays valid,
    and a documented wait the server would refuse still reaches it."""
    wait = (case.query or {}).get("wait")
    if isinstance(wait, str) and DOCUMENTED_WAIT.fullmatch(wait):
        try:
            seconds = parse_duration(wait)
        except ValueError:
            return case
        if LONGEST_WAIT_SECONDS < seconds <= MAX_WAIT_SECONDS:
            case.query["wait"] = f"{LONGEST_WAIT_SECONDS}s"
    return case


BINARY = "application/octet-stream"  # the document's stand-in for binary mode
CE_HEADERS = ("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject")
_fresh = itertools.count()


def _as_documented_in_prose(case: Case) -> Case:
    """A positive event request as the document's descriptions say, which its schema cannot.

    OpenAPI cannot tie headers to a media type: the ce-* headers are each optional, yet binary
    mode needs ce-specversion 1.0, ce-id, ce-source and ce-type, and with plain JSON a
    ce-specversion selects binary mode. A repeated Idempotency-Key with other content is a
    422 the run would draw by chance: each key is made unique."""
    if case.path != "/v1/events" or case.method != "POST":
        return case
    for name in CE_HEADERS:
        case.headers.pop(name, None)
    if case.media_type == BINARY:
        number = next(_fresh)
        case.headers.update(
            {
                "ce-specversion": "1.0",
                "ce-id": f"binary-{number}",
                "ce-source": "/schemathesis",
                "ce-type": "fuzzed.binary",
            }
        )
    key = case.headers.get("Idempotency-Key")
    if isinstance(key, str):
        case.headers["Idempotency-Key"] = f"{key[:240]}-{next(_fresh)}"
    return case


# A batch with an invalid entry is answered 207 (the entry's problem in `results`): rejected.
REJECTED = ["207", "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "429"]
# A valid request may still meet a credential refused (401, 403), a name or id that does not
# exist (404), a key in use (409), or an event id the run already sent with other content (422).
ACCEPTED = ["2xx", "401", "403", "404", "409", "422"]
CHECK_SETTINGS = {
    "negative_data_rejection": {"expected-statuses": REJECTED},
    "positive_data_acceptance": {"expected-statuses": ACCEPTED},
}
# Schemathesis puts the right bearer on each operation (and leaves it out on purpose in some
# negative cases); now and then a positive case carries a wrong one instead.
AUTH = {"ingestKey": {"bearer": API_KEY}, "adminToken": {"bearer": ADMIN_TOKEN}}
WRONG_BEARER = {"Authorization": "Bearer not-a-key-0123456789"}


def _area(path: str) -> str:
    """Events, health, metrics and the document; a subscription's dead letters; the rest of the
    admin API (the unrouted queue, the listings, the dashboard page)."""
    if path.startswith("/v1/admin/subscriptions/{name}/"):
        return "dead-letters"
    return "admin" if path == "/" or path.startswith("/v1/admin/") else "events"


def _fuzz(base_url: str, area: str, statuses: Counter[int]) -> list[str]:
    """Run the area's operations in both modes; the failures, one message each."""
    config = schemathesis.Config.from_dict({"auth": {"openapi": AUTH}, "checks": CHECK_SETTINGS})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                failures.append(f"the document has an invalid operation: {result.err()}")
                continue
            operation = result.ok()
            if _area(operation.path) != area:
                continue
            raw = operation.definition.raw
            # Without parameters or a body there is nothing to make invalid.
            negatable = bool(raw.get("parameters") or raw.get("requestBody"))
            modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for mode in modes if negatable else modes[:1]:
                failure = _run(operation, mode, session, base_url, statuses)
                if failure is not None:
                    failures.append(f"{operation.label} ({mode.value}): {failure}")
    return failures


def _run(
    operation: Operation,
    mode: GenerationMode,
    session: requests.Session,
    base_url: str,
    statuses: Counter[int],
) -> str | None:
    overrides: list[dict[str, str]] = [{}]
    if mode is GenerationMode.POSITIVE:
        overrides = [{}] * 4 + [WRONG_BEARER]
    generated = operation.as_strategy(generation_mode=mode)
    if "{name}" in operation.path:
        # A drawn subscription name never exists: name the real one in most cases.
        named = operation.as_strategy(generation_mode=mode, path_parameters={"name": SUBSCRIPTION})
        generated = st.one_of(generated, named, named)
    generated = generated.map(_short_wait)
    if mode is GenerationMode.POSITIVE:
        generated = generated.map(_as_documented_in_prose)
    cases = st.tuples(generated, st.sampled_from(overrides))

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # Shrinking repeats requests for as long as it finds smaller failures: report the first.
        phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate),
        suppress_health_check=list(hypothesis.HealthCheck),
        report_multiple_bugs=False,
    )
    @hypothesis.given(cases)
    def check(drawn: tuple[Case, dict[str, str]]) -> None:
        case, headers = drawn
        response = case.call_and_validate(
            base_url=base_url,
            session=session,
            headers=headers or None,
            checks=CHECKS,
            additional_checks=[problem_details],
            timeout=10,
        )
        statuses[response.status_code] += 1

    try:
        check()
    # Schemathesis raises its FailureGroup, a BaseExceptionGroup, for failed checks.
    except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - reported with its case
        return str(error)
    return None


# Three runs, each well within the per-test timeout, and the statuses each must have seen: past
# authentication and validation as well as stopped by them.
SEEN = {
    "events": {200, 202, 400, 401, 404},
    "admin": {200, 400, 401, 403, 404},
    "dead-letters": {200, 400, 401, 403, 404},
}


@pytest.mark.parametrize("area", SEEN)
async def test_schemathesis_finds_no_server_error_and_only_documented_answers(
    start_conveyor: StartConveyor, area: str
) -> None:
    conveyor = await start_conveyor(
        (subscription(SUBSCRIPTION, ("#",), Recorder()),),
        api_keys=frozenset({API_KEY}),
        admin_tokens=(("ops", ADMIN_TOKEN),),
        # The documented Conveyor-Delay values reach up to the default maximum.
        max_delay=Settings().max_delay,
    )
    base_url = str(conveyor.client.make_url("")).rstrip("/")

    statuses: Counter[int] = Counter()

    failures = await asyncio.to_thread(_fuzz, base_url, area, statuses)

    assert not failures, "\n\n".join(failures)
    assert SEEN[area] <= set(statuses), statuses


def _paths(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}


async def test_every_role_serves_the_document_of_exactly_its_routes(
    start_conveyor: StartConveyor,
) -> None:
    everything = await start_conveyor(admin_tokens=(("ops", ADMIN_TOKEN),), archive=3600.0)
    worker = await start_conveyor(role=Role.WORKER)

    full = await (await everything.client.get("/openapi.json")).json()
    cut = await (await worker.client.get("/openapi.json")).json()

    assert _paths(full) == _paths(load_document())
    assert _paths(cut) == {
        ("get", "/livez"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/asyncapi.json"),
        ("get", "/docs"),
        ("get", "/docs/{asset}"),
    }
