"""structlog set-up, called once at the entry point."""

from __future__ import annotations

import logging
import sys

import structlog

from service.settings import LogFormat, Settings

__all__ = ["configure_logging"]


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aio-pika and aiormq log through the standard library; keep their warnings, in one stream.
    logging.basicConfig(
        level=max(level, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s"
    )
