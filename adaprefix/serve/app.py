"""The HTTP face of ``adaprefix serve`` (FastAPI): health, the adapters, predictions and generations, and the
OpenAI-compatible routes (:mod:`.openai_api`).

Every error is a JSON object ``{"error": ...}`` naming the problem, and none stops the server or closes the
client's connection: 404 for an unknown adapter or route, 405 for a wrong method, 413 for a request over a size
limit, 422 for a malformed body or inputs that do not fit the adapter's task, 429 when the queue is full, 500 for
anything unexpected. The OpenAI-compatible routes answer the same errors in OpenAI's shape (``{"error": {"message",
"type", "param", "code"}}``, 400 where the others say 422), since that is the shape OpenAI clients read. Limits are checked before the work they bound (:mod:`.admission`). A request whose client
goes away stops waiting, and its rows not yet in a forward are dropped. The OpenAPI page is at /docs, served from
the installed fastapi-offline package (no CDN); the schema at /openapi.json documents each error as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import AdaprefixError
from .admission import BusyError, Guard, LimitError, check_inputs, check_tokens, unless_gone
from .batching import Batcher
from .engine import Engine, InputError, UnknownAdapterError
from .openai_api.api_router import add_openai_routes
from .openai_api.protocol import error_content as openai_error, is_openai
from .protocol import (REQUEST_ERRORS, SERVER_ERRORS, GenerateRequest, GenerateResponse, PredictRequest,
                       PredictResponse)

log = logging.getLogger("adaprefix.serve")


def error_content(path: str, status: int, message: str, code: str | None = None,
                  param: str | None = None) -> dict[str, Any]:
    """The body of an error answer to ``path``: ``{"error": message}``, the server's one shape, except on the
    OpenAI-compatible routes, which answer in OpenAI's (:mod:`.openai_api`), since OpenAI clients read that one."""
    if is_openai(path):
        return openai_error(status, message, param, code)
    return {"error": message}


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
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, error_content=error_content)
    app.state.engine, app.state.batcher = engine, batcher

    def routes() -> str:
        return ", ".join(f"{method} {route.path}" for route in app.routes
                         if isinstance(route, APIRoute) and route.include_in_schema for method in sorted(route.methods))

    def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None,
               code: str | None = None, param: str | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, content=error_content(request.url.path, status, message, code, param),
                            headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = {400: "malformed request body: it is not UTF-8 text, so not JSON",
                   404: f"no route {request.url.path}; the routes are {routes()}",
                   405: f"{request.method} is not allowed on {request.url.path}; the routes are {routes()}"}
        code = {413: "request_too_large"}.get(err.status_code)
        return _error(request, err.status_code, message.get(err.status_code, str(err.detail)), err.headers, code)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        problems = [(".".join(str(p) for p in e["loc"][1:] if p != "body") or "body", e) for e in err.errors()]
        if is_openai(request.url.path):  # OpenAI's status for a body it cannot take, naming the first field
            param, first = problems[0]
            code = first["type"] if first["type"] == "unsupported_parameter" else None
            message = "; ".join(f"{where}: {e['msg']}" for where, e in problems)
            return _error(request, 400, message, code=code, param=None if param == "body" else param)
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return _error(request, 422, f"malformed request body: {'; '.join(problems)}")

    @app.exception_handler(UnknownAdapterError)
    async def unknown(request: Request, err: UnknownAdapterError):
        return _error(request, 404, str(err), code="model_not_found", param="model")

    @app.exception_handler(LimitError)
    async def over_limit(request: Request, err: LimitError):
        return _error(request, 413, str(err), code=err.code, param=err.param)

    @app.exception_handler(BusyError)
    async def busy(request: Request, err: BusyError):
        return _error(request, 429, str(err), {"Retry-After": str(err.retry_after)}, code="rate_limit_exceeded")

    @app.exception_handler(AdaprefixError)
    async def refused(request: Request, err: AdaprefixError):
        status = 400 if is_openai(request.url.path) else 422  # OpenAI answers 400 where the server's routes say 422
        return _error(request, status, str(err), code=getattr(err, "code", None), param=getattr(err, "param", None))

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
        check_inputs(settings, len(body.inputs))

        async def work() -> dict[str, Any]:
            # Tokenizing is CPU work: off the event loop, beside the forward thread.
            rows = await asyncio.get_running_loop().run_in_executor(None, engine.encode, body.adapter, body.inputs)
            check_tokens(settings, rows)
            return {"predictions": await batcher.predict(rows)}

        with batcher.admit(len(body.inputs)):
            return await unless_gone(request, work())

    @app.post("/v1/generate", response_model=GenerateResponse, responses=REQUEST_ERRORS)
    async def generate(body: GenerateRequest, request: Request) -> Any:
        """Greedy completions of raw prompts from a language-model adapter or a generation run, batched with
        concurrent prompts for any of them."""
        engine.adapter(body.adapter)
        if body.max_new_tokens > settings.max_new_tokens:
            raise InputError(f"max_new_tokens: {body.max_new_tokens} is over this server's limit of "
                             f"{settings.max_new_tokens} (--max-new-tokens)")
        check_inputs(settings, len(body.inputs))

        async def work() -> dict[str, Any]:
            rows = await asyncio.get_running_loop().run_in_executor(None, engine.prompts, body.adapter, body.inputs,
                                                                    body.max_new_tokens)
            check_tokens(settings, rows)
            return {"completions": await batcher.generate(rows, body.max_new_tokens),
                    "truncated": [i for i, row in enumerate(rows) if row.truncated]}

        with batcher.admit(len(body.inputs)):
            return await unless_gone(request, work())

    add_openai_routes(app, engine, batcher)
    return app
