"""RFC 9457 problem details: every error the ingress answers is one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["PROBLEM_CONTENT_TYPE", "Problem", "json_response", "problem_response"]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:conveyor:problem:"


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    slug: str  # stable machine-readable kind, e.g. "invalid-event"
    title: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


def problem_response(problem: Problem) -> web.Response:
    return web.Response(
        status=problem.status,
        body=orjson.dumps(problem.body()),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def json_response(document: Any, status: int = 200) -> web.Response:
    """A JSON answer, written with orjson like every other body the service sends."""
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")
