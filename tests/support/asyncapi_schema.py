"""Checking a document against the AsyncAPI 3.0.0 JSON Schema vendored beside this module."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA = Path(__file__).parent / "asyncapi" / "asyncapi-3.0.0.schema.json"


@cache
def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))


def asyncapi_complaints(document: dict[str, Any]) -> list[str]:
    """The schema's complaints about `document`, one line each (empty: valid AsyncAPI 3.0)."""
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in _validator().iter_errors(document)
    ]
