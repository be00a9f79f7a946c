"""The HTTP face of ``adaprefix serve`` (FastAPI): health, the adapters, predictions and generations.

Errors never stop the server; each is a JSON object ``{"error": ...}`` naming the problem: 404 for an unknown
adapter, 422 for a malformed body or inputs that do not fit the adapter's task, 500 for anything unexpected.
The OpenAPI page is at /docs (schema at /openapi.json).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import AdaprefixError
from .batching import Batcher
from .engine import Engine, InputError, UnknownAdapterError

Input = Union[str, list[str], dict[str, Any]]


class PredictRequest(BaseModel):
    adapter: str = Field(description="The adapter's name (GET /v1/adapters lists them).")
    inputs: list[Input] = Field(
        min_length=1,
        description="Examples in the task's own format, as `adaprefix predict --file` reads jsonl (e.g. "
                    '{"premise": ..., "hypothesis": ...} for CB/RTE, {"tokens": [...]} for NER), or a text, or '
                    "[text, text_pair], where the task has one or two texts.")


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]] = Field(
        description="One per input, as `adaprefix predict --output` writes them: the input, then label and scores "
                    '(or tags); "truncated": true where the input was cut to the adapter\'s max_length.')


class GenerateRequest(BaseModel):
    adapter: str = Field(description="A decoder adapter's name: a language-model adapter, or a run of a generation "
                                     "task (whose /v1/predict also answers inputs in the task's own format).")
    inputs: list[str] = Field(min_length=1, description="Prompts, as given (no task template applied).")
    max_new_tokens: int = Field(32, ge=1, description="Tokens to generate per prompt (greedy).")


class GenerateResponse(BaseModel):
    completions: list[str]
    truncated: list[int] = Field(default_factory=list,
                                 description="Indices of prompts cut from their start to leave room for max_new_tokens "
                                             "within the model's positions.")


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app serving ``engine``'s adapters; its batching loop runs while the app is up."""
    batcher = Batcher(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="adaprefix serve", version=__version__, lifespan=lifespan,
                  description="Many prefix adapters on one frozen backbone; requests for different adapters share "
                              "one forward.")
    app.state.engine, app.state.batcher = engine, batcher

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return _error(422, f"malformed request body: {'; '.join(problems)}")

    @app.exception_handler(UnknownAdapterError)
    async def unknown(request: Request, err: UnknownAdapterError):
        return _error(404, str(err))

    @app.exception_handler(AdaprefixError)
    async def refused(request: Request, err: AdaprefixError):
        return _error(422, str(err))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        return _error(500, f"internal error: {type(err).__name__}: {err}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Up, with the adapters held and the forwards run so far."""
        return {"status": "ok", "backbone": engine.backbone, "adapters": len(engine.adapters),
                "batches": batcher.batches, "rows": batcher.rows}

    @app.get("/v1/adapters")
    async def adapters() -> dict[str, list[dict[str, Any]]]:
        """Every served adapter: name, task, kind, method, labels, and the folder it came from."""
        return {"adapters": [served.describe() for served in engine.adapters.values()]}

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """Labels (or tags) for inputs of one adapter, batched with concurrent requests for any adapter."""
        # Tokenizing is CPU work: off the event loop, beside the forward thread.
        rows = await asyncio.get_running_loop().run_in_executor(None, engine.encode, body.adapter, body.inputs)
        return {"predictions": await batcher.predict(rows)}

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        """Greedy completions of raw prompts from a language-model adapter or a generation run, batched with
        concurrent prompts for any of them."""
        engine.adapter(body.adapter)  # an unknown name is a 404 whatever else is wrong
        if body.max_new_tokens > engine.settings.max_new_tokens:
            raise InputError(f"max_new_tokens: {body.max_new_tokens} is over this server's limit of "
                             f"{engine.settings.max_new_tokens}")
        rows = await asyncio.get_running_loop().run_in_executor(None, engine.prompts, body.adapter, body.inputs,
                                                                body.max_new_tokens)
        return {"completions": await batcher.generate(rows, body.max_new_tokens),
                "truncated": [i for i, row in enumerate(rows) if row.truncated]}

    return app
