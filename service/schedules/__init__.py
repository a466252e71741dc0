"""Periodic events: `[[schedules]]` in the configuration file, fired once per tick by however
many processes run them."""

from service.schedules.config import Missed, Schedule, load_schedules
from service.schedules.runner import Scheduler

__all__ = ["Missed", "Schedule", "Scheduler", "load_schedules"]
