"""Audit and metrics at the REST boundary: one record per request, written when its response is sent.

``AuditRequests`` is the ASGI middleware, just inside ``RequestHeaders`` (so the record carries the
``x-request-id``) and outside the Host/Origin check and the bearer check (so what they refuse is
recorded too, under the route they were meant for). The operation is the route's template (``POST /v1/containers``), or
``unmatched``; the caller is the owner ``BearerAuth`` set. A route's ``ContainerMCPError`` is noted
by ``app._endpoint`` (``audit.note_error``); a response refused without one (401, 421, ...) gets
the error type ``http_<status>``. ``/metrics`` itself is neither recorded nor counted: a scraper
would fill the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit import recording
from ..observer import Observer

__all__ = ["METRICS_PATH", "AuditRequests"]

METRICS_PATH = "/metrics"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _operation(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    route: Any = scope.get("route")
    if route is None:
        # Refused before routing (Host, Origin, bearer): name the route it was meant for.
        route = next((r for r in routes if r.matches(scope)[0] is not Match.NONE), None)
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    method = scope["method"] if scope["method"] in _METHODS else "OTHER"
    return f"{method} {path}"


class AuditRequests:
    """ASGI middleware: an audit record per REST request (see the module docstring)."""

    def __init__(self, app: ASGIApp, observer: Observer, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.observer = observer
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        record = self.observer.start("rest", "unmatched")
        state = scope.setdefault("state", {})
        record.request_id = state.get("request_id")

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
            await send(message)

        with recording(record):
            try:
                await self.app(scope, receive, send_status)
            except Exception:
                if record.error_type is None:
                    record.fail("InternalError")
                raise
            except BaseException:
                record.fail("Cancelled")
                raise
            finally:
                record.operation = _operation(scope, self.routes)
                owner = state.get("owner")
                self.observer.identify(record, owner if isinstance(owner, str) else None)
                if record.status is not None and record.status >= 400 and record.error_type is None:
                    record.fail(f"http_{record.status}")
                self.observer.finish(record)
