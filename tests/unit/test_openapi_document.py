"""service/http/openapi.json lists exactly the routes build_app registers, so they cannot drift."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from producers.formats import BASE64_PATTERN
from service import Role, Settings, build_app
from service.http.api_docs import DOCS_ASSETS
from service.http.openapi_route import load_document, served_routes
from service.http.status_route import WAIT_PATTERN


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}


def test_the_document_lists_exactly_the_routes_of_a_full_process() -> None:
    # role `all` with an admin token and the archive registers every route conveyor has.
    app = build_app(Settings(role=Role.ALL, admin_tokens=(("ops", "x" * 16),), archive=3600.0))

    assert served_routes(app.router) == documented(load_document())


def test_the_document_is_openapi_3_1_of_this_version() -> None:
    document = load_document()

    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == version("conveyor")


def test_every_error_answer_is_documented_as_problem_json() -> None:
    document = load_document()
    shared = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, given in operation["responses"].items():
                if int(status) < 400 or path == "/readyz":  # readyz: a health document
                    continue
                answer = shared[given["$ref"].rsplit("/", 1)[1]] if "$ref" in given else given
                assert list(answer["content"]) == ["application/problem+json"], (method, path)


def test_the_wait_pattern_is_the_one_the_server_checks() -> None:
    parameters = load_document()["paths"]["/v1/events/{event_id}"]["get"]["parameters"]
    (wait,) = [parameter for parameter in parameters if parameter["name"] == "wait"]

    assert wait["schema"]["pattern"] == WAIT_PATTERN


def test_the_base64_pattern_is_the_one_the_server_checks() -> None:
    members = load_document()["components"]["schemas"]["EventMembers"]["properties"]

    assert members["data_base64"]["pattern"] == BASE64_PATTERN


def test_the_docs_assets_are_the_ones_the_server_serves() -> None:
    parameters = load_document()["paths"]["/docs/{asset}"]["get"]["parameters"]

    assert parameters[0]["schema"]["enum"] == list(DOCS_ASSETS)
