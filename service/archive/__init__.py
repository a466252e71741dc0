"""The archive: a RabbitMQ stream of every event, browsing it, and replays into one subscription."""

from service.archive.events import ArchivedEvent, ArchiveQuery
from service.archive.reading import ArchiveOffError, first_and_last, read_archive
from service.archive.replay_progress import ReplayRequest, ReplayState
from service.archive.replays import Replays
from service.archive.stream import ArchiveSpec, declare_archive

__all__ = [
    "ArchiveOffError",
    "ArchiveQuery",
    "ArchiveSpec",
    "ArchivedEvent",
    "ReplayRequest",
    "ReplayState",
    "Replays",
    "declare_archive",
    "first_and_last",
    "read_archive",
]
