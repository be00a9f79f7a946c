"""What a request may ask of ``adaprefix serve``, checked before the work it would cost (TGI's validation is the
model), each limit with its own status and a message naming the limit and its flag:

- the body's size, from its ``Content-Length`` before a byte is read, or counted as it streams in: 413;
- inputs per request (before tokenizing) and tokens per request (after tokenizing, before any forward): 413;
- rows admitted but not answered yet, the queue: 429 with ``Retry-After``.

:class:`Guard` also turns any unexpected failure into a JSON 500. Starlette's own handler for those re-raises the
error after answering, and uvicorn then closes the connection, so that a client's next request on the same
kept-alive connection was reset.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine import InputError

log = logging.getLogger("adaprefix.serve")


class LimitError(InputError):
    """A request over one of the server's limits (413); the message names the limit and its flag."""


class BusyError(InputError):
    """The queue is full (429); ``retry_after`` is the seconds the queue needs to drain, as last measured."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


async def send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def too_large(size: str, limit: int) -> str:
    return (f"request body of {size} is over this server's limit of {limit} bytes (--max-body-bytes); send fewer "
            "or shorter inputs per request")


class Guard:
    """ASGI middleware: the body-size limit, and a JSON 500 (logged, not re-raised) for any unexpected error."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await send_json(send, 413, {"error": too_large(f"{int(declared)} bytes", limit)})
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # a chunked body has no length to check up front
                raise HTTPException(413, too_large(f"more than {limit} bytes", limit))
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception as err:  # noqa: BLE001 - answered here so that the connection stays usable
            log.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_json(send, 500, {"error": f"internal error ({type(err).__name__}); the server's log "
                                                     "has the details"})
