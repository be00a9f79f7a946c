"""The HTTP face of ``adaprefix serve`` (FastAPI): health, the adapters, predictions and generations.

Every error is a JSON object ``{"error": ...}`` naming the problem, and none stops the server or closes the
client's connection: 404 for an unknown adapter or route, 405 for a wrong method, 413 for a request over a size
limit, 422 for a malformed body or inputs that do not fit the adapter's task, 429 when the queue is full, 500 for
anything unexpected. Limits are checked before the work they bound (:mod:`.admission`). A request whose client
goes away stops waiting, and its rows not yet in a forward are dropped. The OpenAPI page is at /docs, served from
the installed fastapi-offline package (no CDN); the schema at /openapi.json documents each error as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.types import Receive

from .. import __version__
from ..errors import AdaprefixError
from .admission import BusyError, Guard, LimitError
from .batching import Batcher
from .engine import Engine, InputError, Row, UnknownAdapterError
from .protocol import (REQUEST_ERRORS, SERVER_ERRORS, GenerateRequest, GenerateResponse, PredictRequest,
                       PredictResponse)

log = logging.getLogger("adaprefix.serve")
CLIENT_GONE = 499  # nginx's "client closed request": sent to no one, but it marks the access log line


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away. The body has been read by now, so the next message the server has
    for this request is its disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work: Awaitable[Any]) -> Any:
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


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app serving ``engine``'s adapters under ``engine.settings``' limits; its batching loop runs
    while the app is up."""
    batcher = Batcher(engine)
    settings = engine.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPIOffline(title="adaprefix serve", version=__version__, lifespan=lifespan,
                         description="Many prefix adapters on one frozen backbone; requests for different adapters "
                                     "share one forward.")
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes)
    app.state.engine, app.state.batcher = engine, batcher

    def routes() -> str:
        return ", ".join(f"{method} {route.path}" for route in app.routes
                         if isinstance(route, APIRoute) and route.include_in_schema for method in sorted(route.methods))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = {400: "malformed request body: it is not UTF-8 text, so not JSON",
                   404: f"no route {request.url.path}; the routes are {routes()}",
                   405: f"{request.method} is not allowed on {request.url.path}; the routes are {routes()}"}
        return _error(err.status_code, message.get(err.status_code, str(err.detail)), err.headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return _error(422, f"malformed request body: {'; '.join(problems)}")

    @app.exception_handler(UnknownAdapterError)
    async def unknown(request: Request, err: UnknownAdapterError):
        return _error(404, str(err))

    @app.exception_handler(LimitError)
    async def over_limit(request: Request, err: LimitError):
        return _error(413, str(err))

    @app.exception_handler(BusyError)
    async def busy(request: Request, err: BusyError):
        return _error(429, str(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(AdaprefixError)
    async def refused(request: Request, err: AdaprefixError):
        return _error(422, str(err))

    def check_inputs(count: int) -> None:
        if count > settings.max_inputs:
            raise LimitError(f"inputs: {count} inputs, over this server's limit of {settings.max_inputs} per request "
                             "(--max-inputs); split them into several requests")

    def check_tokens(rows: Sequence[Row]) -> None:
        tokens = sum(row.tokens for row in rows)
        if tokens > settings.max_request_tokens:
            raise LimitError(f"inputs: {tokens} tokens in all, over this server's limit of "
                             f"{settings.max_request_tokens} per request (--max-request-tokens); split them into "
                             "several requests")

    @app.get("/health", responses=SERVER_ERRORS)
    async def health() -> dict[str, Any]:
        """Up, with the adapters held, the forwards run so far and the inputs queued."""
        return {"status": "ok", "backbone": engine.backbone, "adapters": len(engine.adapters),
                "batches": batcher.batches, "rows": batcher.rows, "queued": batcher.admitted}

    @app.get("/v1/adapters", responses=SERVER_ERRORS)
    async def adapters() -> dict[str, list[dict[str, Any]]]:
        """Every served adapter: name, task, kind, method, labels, and the folder it came from."""
        return {"adapters": [served.describe() for served in engine.adapters.values()]}

    @app.post("/v1/predict", response_model=PredictResponse, responses=REQUEST_ERRORS)
    async def predict(body: PredictRequest, request: Request) -> Any:
        """Labels (or tags) for inputs of one adapter, batched with concurrent requests for any adapter."""
        engine.adapter(body.adapter)  # an unknown name is a 404 whatever else is wrong
        check_inputs(len(body.inputs))

        async def work() -> dict[str, Any]:
            # Tokenizing is CPU work: off the event loop, beside the forward thread.
            rows = await asyncio.get_running_loop().run_in_executor(None, engine.encode, body.adapter, body.inputs)
            check_tokens(rows)
            return {"predictions": await batcher.predict(rows)}

        with batcher.admit(len(body.inputs)):
            return await _unless_gone(request, work())

    @app.post("/v1/generate", response_model=GenerateResponse, responses=REQUEST_ERRORS)
    async def generate(body: GenerateRequest, request: Request) -> Any:
        """Greedy completions of raw prompts from a language-model adapter or a generation run, batched with
        concurrent prompts for any of them."""
        engine.adapter(body.adapter)
        if body.max_new_tokens > settings.max_new_tokens:
            raise InputError(f"max_new_tokens: {body.max_new_tokens} is over this server's limit of "
                             f"{settings.max_new_tokens} (--max-new-tokens)")
        check_inputs(len(body.inputs))

        async def work() -> dict[str, Any]:
            rows = await asyncio.get_running_loop().run_in_executor(None, engine.prompts, body.adapter, body.inputs,
                                                                    body.max_new_tokens)
            check_tokens(rows)
            return {"completions": await batcher.generate(rows, body.max_new_tokens),
                    "truncated": [i for i, row in enumerate(rows) if row.truncated]}

        with batcher.admit(len(body.inputs)):
            return await _unless_gone(request, work())

    return app
