"""`conveyor asyncapi`: print the AsyncAPI document of the AMQP side, as GET /asyncapi.json
serves it, from the settings and the subscriptions file alone (no broker needed)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson

from consumers.subscription import Subscription
from service.http.asyncapi import asyncapi_document
from service.settings import Settings

__all__ = ["add_asyncapi_command", "asyncapi_command"]


def add_asyncapi_command(commands: argparse._SubParsersAction[Any]) -> None:
    commands.add_parser(
        "asyncapi",
        help="print the AsyncAPI 3.0 document of the AMQP side",
        description="Print the AsyncAPI 3.0 document (JSON) of CONVEYOR_NAMESPACE and "
        "CONVEYOR_CONFIG (the same settings as serve): exchanges, queues, operations and "
        "payload schemas. Nothing connects to the broker.",
    )


def asyncapi_command(
    settings: Settings, subscriptions: Sequence[Subscription], out: TextIO = sys.stdout
) -> int:
    document = asyncapi_document(settings, subscriptions)
    out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
