"""GET /v1/admin/schedules and the dashboard's schedules panel (`schedules.js`)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from service.admin.api import ADMIN_PREFIX, PAGE_HEADERS, admin_operation
from service.app_keys import SCHEDULER, SETTINGS
from service.http.auth import authorize_admin
from service.http.problems import Problem, json_response, problem_response

__all__ = ["add_schedule_routes"]


def add_schedule_routes(app: web.Application) -> None:
    app.router.add_get(f"{ADMIN_PREFIX}/schedules", list_schedules)
    app.router.add_get("/schedules.js", schedules_script)


async def list_schedules(request: web.Request) -> web.Response:
    """Each schedule: its timing, its last tick (fired by any process) and that tick's event's
    state, its next tick, and what this process knows (running here, failing, skipped)."""
    poll = request.query.get("poll")
    if poll is None:
        admin_operation(request, "schedules.list")
    else:
        authorize_admin(request, request.app[SETTINGS].admin_tokens)  # polled: not audit-logged
        if poll != "1":
            return problem_response(
                Problem(400, "invalid-admin-request", "Invalid request", "poll must be 1")
            )
    listed = await request.app[SCHEDULER].listing()
    return json_response({"schedules": listed, "time": request.app[SCHEDULER].now()})


async def schedules_script(_request: web.Request) -> web.Response:
    script = resources.files("service.admin").joinpath("schedules.js").read_bytes()
    return web.Response(body=script, content_type="text/javascript", headers=PAGE_HEADERS)
