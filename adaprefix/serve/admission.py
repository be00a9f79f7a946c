"""What a request may ask of ``adaprefix serve``, checked before the work it would cost (TGI's validation is the
model), each limit with its own status and a message naming the limit and its flag:

- the body's size, from its ``Content-Length`` before a byte is read, or counted as it streams in: 413;
- inputs per request (before tokenizing) and tokens per request (after tokenizing, before any forward): 413;
- rows admitted but not answered yet, the queue: 429 with ``Retry-After``.

A request whose client goes away stops waiting (:func:`unless_gone`).

:class:`Guard` also turns any unexpected failure into a JSON 500. Starlette's own handler for those re-raises the
error after answering, and uvicorn then closes the connection, so that a client's next request on the same
kept-alive connection was reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Awaitable, Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine import InputError, Row
from .settings import Settings

log = logging.getLogger("adaprefix.serve")
CLIENT_GONE = 499  # nginx's "client closed request": sent to no one, but it marks the access log line


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


def check_inputs(settings: Settings, count: int, field: str = "inputs") -> None:
    """Refuse (413) a request of more than ``--max-inputs`` inputs (``field``: the request's name for them)."""
    if count > settings.max_inputs:
        raise LimitError(f"{field}: {count} inputs, over this server's limit of {settings.max_inputs} per request "
                         "(--max-inputs); split them into several requests", param=field, code="request_too_large")


def check_tokens(settings: Settings, rows: Sequence[Row], field: str = "inputs") -> None:
    """Refuse (413) a request whose inputs, as encoded, hold more than ``--max-request-tokens`` tokens."""
    tokens = sum(row.tokens for row in rows)
    if tokens > settings.max_request_tokens:
        raise LimitError(f"{field}: {tokens} tokens in all, over this server's limit of "
                         f"{settings.max_request_tokens} per request (--max-request-tokens); split them into "
                         "several requests", param=field, code="request_too_large")


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away. The body has been read by now, so the next message the server has
    for this request is its disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[Any]) -> Any:
    """``work``'s result; cancelled, and an answer for no one, if the client goes away first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("%s %s: the client went away; its work was dropped", request.method, request.url.path)
        return Response(status_code=CLIENT_GONE)
    return task.result()


def too_large(size: str, limit: int) -> str:
    return (f"request body of {size} is over this server's limit of {limit} bytes (--max-body-bytes); send fewer "
            "or shorter inputs per request")


class Guard:
    """ASGI middleware: the body-size limit, and a JSON 500 (logged, not re-raised) for any unexpected error, each
    in the error shape of the route asked (``error_content(path, status, message, code)``)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 error_content: Callable[[str, int, str, str | None], dict[str, Any]]):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.error_content = error_content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await send_json(send, 413, self.error_content(scope["path"], 413, too_large(f"{int(declared)} bytes", limit),
                                                          "request_too_large"))
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
                message = f"internal error ({type(err).__name__}); the server's log has the details"
                await send_json(send, 500, self.error_content(scope["path"], 500, message, None))
