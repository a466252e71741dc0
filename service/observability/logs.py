"""structlog set-up, called once at the entry point.

Every line goes to standard output in the one format chosen: structlog's own loggers and the
standard library's (aiormq, aio-pika, aiohttp, asyncpg), the latter through structlog's
`ProcessorFormatter`, so a JSON log is JSON on every line. The console format has colour only
when its output is a terminal, so a file or a pipe gets no escape codes.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from service.settings import LogFormat, Settings

__all__ = ["configure_logging"]

# Libraries are chatty below WARNING; their warnings and errors are what an operator needs.
LIBRARY_LEVEL = logging.WARNING


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    output = stream if stream is not None else sys.stdout
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=output.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, LIBRARY_LEVEL))
