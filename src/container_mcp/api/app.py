"""The OpenAI-compatible ``/v1/containers`` REST API over the shared ContainerService.

Nine routes, served under ``/v1`` and also without the prefix (clients disagree on whether the
base URL ends in ``/v1``):

=======  ===============================================  ==============================
method   path                                             operation (OpenAI operationId)
=======  ===============================================  ==============================
POST     /containers                                      CreateContainer
GET      /containers                                      ListContainers
GET      /containers/{container_id}                       RetrieveContainer
DELETE   /containers/{container_id}                       DeleteContainer
POST     /containers/{container_id}/files                 CreateContainerFile
GET      /containers/{container_id}/files                 ListContainerFiles
GET      /containers/{container_id}/files/{file_id}       RetrieveContainerFile
DELETE   /containers/{container_id}/files/{file_id}       DeleteContainerFile
GET      /containers/{container_id}/files/{file_id}/...   RetrieveContainerFileContent
         content
=======  ===============================================  ==============================

plus ``GET /openapi.json`` and ``GET /metrics`` (Prometheus; behind the bearer check like the
routes). Middleware, outermost first: ``RequestHeaders`` (x-request-id on everything),
``AuditRequests`` (an audit record per request, and the metrics; ``observe.py``),
``HostOriginCheck`` (421/403 for a foreign Host or Origin: DNS rebinding, cross-site requests;
see ``origin.py``), ``BearerAuth`` (owner per API key, 401 otherwise). JSON bodies are
taken only with a JSON content type (415 otherwise). A query parameter a route does not take
(``QUERY``) is refused with 400 naming it, as are unknown body fields (``bodies.py``). Each route
is a small function of (service, request, owner); ``_endpoint`` turns the error tree into responses through
``errors.error_response``, the one mapping. Headers the SDKs add (``x-stainless-*``,
``OpenAI-Organization``, ``OpenAI-Project``) and a ``Content-Type`` on bodiless requests are
ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .. import audit
from ..audit import AuditLog
from ..auth import BearerVerifier
from ..errors import ContainerMCPError
from ..hosts import OriginPolicy
from ..observer import Observer
from ..service import ContainerService
from ..settings import Settings
from . import files
from .auth import BearerAuth
from .bodies import (
    CONTAINER_LIST_QUERY,
    FILE_LIST_QUERY,
    check_query,
    container_spec,
    list_params,
    read_json,
    require_json,
)
from .errors import SERVER, api_error_response, error_response
from .middleware import RequestHeaders
from .observe import METRICS_PATH, AuditRequests
from .openapi import openapi_document
from .origin import HostOriginCheck
from .wire import container_json, deleted_json, file_json, json_response, page_json

__all__ = ["create_app"]

log = logging.getLogger("container_mcp.api")

Handler = Callable[[ContainerService, Request, str], Awaitable[Response]]


async def create_container(service: ContainerService, request: Request, owner: str) -> Response:
    require_json(request.headers.get("content-type"))
    spec = container_spec(await read_json(request.stream()))
    return json_response(container_json(await service.create_container(owner, spec)))


async def list_containers(service: ContainerService, request: Request, owner: str) -> Response:
    params = list_params(request.query_params, with_name=True)
    return json_response(page_json(await service.list_containers(owner, params), container_json))


async def retrieve_container(service: ContainerService, request: Request, owner: str) -> Response:
    return json_response(container_json(await service.get_container(owner, request.path_params["container_id"])))


async def delete_container(service: ContainerService, request: Request, owner: str) -> Response:
    return json_response(deleted_json(await service.delete_container(owner, request.path_params["container_id"])))


async def create_file(service: ContainerService, request: Request, owner: str) -> Response:
    created = await files.create_file(service, owner, request.path_params["container_id"], request)
    return json_response(file_json(created))


async def list_files(service: ContainerService, request: Request, owner: str) -> Response:
    params = list_params(request.query_params, with_name=False)
    page = await service.list_files(owner, request.path_params["container_id"], params)
    return json_response(page_json(page, file_json))


async def retrieve_file(service: ContainerService, request: Request, owner: str) -> Response:
    p = request.path_params
    return json_response(file_json(await service.get_file(owner, p["container_id"], p["file_id"])))


async def delete_file(service: ContainerService, request: Request, owner: str) -> Response:
    p = request.path_params
    return json_response(deleted_json(await service.delete_file(owner, p["container_id"], p["file_id"])))


async def file_content(service: ContainerService, request: Request, owner: str) -> Response:
    p = request.path_params
    return await files.file_content(service, owner, p["container_id"], p["file_id"])


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("POST", "/containers", create_container, "CreateContainer"),
    ("GET", "/containers", list_containers, "ListContainers"),
    ("GET", "/containers/{container_id}", retrieve_container, "RetrieveContainer"),
    ("DELETE", "/containers/{container_id}", delete_container, "DeleteContainer"),
    ("POST", "/containers/{container_id}/files", create_file, "CreateContainerFile"),
    ("GET", "/containers/{container_id}/files", list_files, "ListContainerFiles"),
    ("GET", "/containers/{container_id}/files/{file_id}", retrieve_file, "RetrieveContainerFile"),
    ("DELETE", "/containers/{container_id}/files/{file_id}", delete_file, "DeleteContainerFile"),
    ("GET", "/containers/{container_id}/files/{file_id}/content", file_content, "RetrieveContainerFileContent"),
]
"""(method, path under /v1, handler, OpenAI operationId); ``openapi.py`` describes the same list."""


QUERY: dict[Handler, tuple[str, ...]] = {list_containers: CONTAINER_LIST_QUERY, list_files: FILE_LIST_QUERY}
"""The query parameters each route takes (none where unlisted); any other is refused with 400."""


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def _endpoint(service: ContainerService, handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        owner = str(request.scope["state"]["owner"])
        handler = handlers["GET" if request.method == "HEAD" else request.method]
        try:
            check_query(request.query_params, QUERY.get(handler, ()))
            return await handler(service, request, owner)
        except ContainerMCPError as exc:
            audit.note_error(exc)
            log.debug("%s %s %s -> %s", _request_id(request), request.method, request.url.path, type(exc).__name__)
            return error_response(exc)
        except ClientDisconnect:
            log.info("%s client disconnected during %s %s", _request_id(request), request.method, request.url.path)
            return Response(status_code=400)
        except Exception as exc:
            audit.note_error(exc)
            log.exception("%s unexpected error in %s %s", _request_id(request), request.method, request.url.path)
            return _internal_error(request)

    return endpoint


def _internal_error(request: Request) -> Response:
    return api_error_response(
        500,
        f"The server had an error while processing your request (request id {_request_id(request)}); "
        "its effect is unknown: check with a list or retrieve call before retrying.",
        type=SERVER,
        headers={"x-should-retry": "false", "x-request-id": _request_id(request)},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return api_error_response(404, f"Invalid URL ({where})")
    if exc.status_code == 405:
        return api_error_response(405, f"Method not allowed ({where})", headers=dict(exc.headers or {}))
    return api_error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Reached only for errors outside the routes (a middleware bug): the routes catch their own.
    return _internal_error(request)


def create_app(
    service: ContainerService,
    settings: Settings,
    *,
    verifier: BearerVerifier | None = None,
    host: str = "127.0.0.1",
    audit_log: AuditLog | None = None,
) -> Starlette:
    """The ASGI app. Callers are checked by ``verifier`` (default: the static keys of ``settings``; OAuth
    mode needs one from ``open_verifier``); without keys or OAuth every caller is one anonymous owner
    (see ``auth.py``: ``serve_api`` permits that on loopback hosts only). ``host`` is the bound
    address, an allowed ``Host`` beside the loopback names and ``settings.allowed_hosts``. Every
    request is written to ``audit_log`` (the process's one; default: none) and counted in this app's
    own metrics, served at ``/metrics``.
    """
    if verifier is None:
        verifier = BearerVerifier.from_keys(settings)
    policy = OriginPolicy.from_settings(settings, host)
    if not verifier.enabled:
        log.warning(
            "no API keys configured: every request is accepted as one anonymous owner. Set "
            "CONTAINER_MCP_API_KEYS (or --api-keys-file) before exposing this server beyond this machine."
        )
    document = json_response(openapi_document()).body

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler, _ in ROUTES:
        by_path.setdefault(path, {})[method] = handler
    observer = Observer(audit_log or AuditLog(None), service.ledger)
    routes: list[Route] = [
        Route("/openapi.json", openapi),
        Route("/v1/openapi.json", openapi),
        Route(METRICS_PATH, observer.metrics.endpoint, methods=["GET"]),
    ]
    for prefix in ("/v1", ""):
        for path, handlers in by_path.items():
            routes.append(Route(prefix + path, _endpoint(service, handlers), methods=list(handlers)))
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestHeaders),
            Middleware(AuditRequests, observer=observer, routes=routes),
            Middleware(HostOriginCheck, policy=policy),
            Middleware(BearerAuth, verifier=verifier),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )
