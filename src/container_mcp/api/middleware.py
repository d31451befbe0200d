"""Headers every response carries, errors included: ``x-request-id`` and OpenAI's version headers."""

from __future__ import annotations

import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestHeaders", "new_request_id"]

OPENAI_VERSION = "2020-10-01"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


class RequestHeaders:
    """ASGI middleware: a fresh ``x-request-id`` per request (also in ``scope["state"]``), plus
    ``openai-version`` and ``openai-processing-ms`` (time to the status line)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = round((time.perf_counter() - started) * 1000)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers += [
                    (b"x-request-id", request_id.encode()),
                    (b"openai-version", OPENAI_VERSION.encode()),
                    (b"openai-processing-ms", str(elapsed).encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
