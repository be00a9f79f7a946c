"""The OpenAI-compatible routes of ``adaprefix serve``: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, the adapter named by the request's ``model``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request

from ..batching import Batcher
from ..engine import Engine
from .protocol import (PATHS, ChatCompletionRequest, ChatCompletionResponse, COMPLETION_ERRORS, CompletionRequest,
                       CompletionResponse, MODEL_ERRORS, ModelList)
from .serving import OpenAIServing

def _stream(chunk: str) -> dict[str, Any]:
    """A streamed answer: each event's data is a ``chunk`` object as JSON (or, if generation fails after the stream
    began, an error in OpenAI's shape), and the last one is ``[DONE]``. OpenAPI 3.1's ``schema`` of an event
    stream describes one event."""
    payload = {"type": "object", "required": ["id", "object", "created", "model", "choices"],
               "properties": {"object": {"const": chunk}, "choices": {"type": "array"}}}
    data = {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json",
                                            "contentSchema": {"anyOf": [payload, {"required": ["error"]}]}}]}
    return {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}},
                                  "description": f"With stream: {chunk} chunks as `data: {{json}}` events, then "
                                                 "`data: [DONE]`."}}


def add_openai_routes(app: FastAPI, engine: Engine, batcher: Batcher) -> None:
    """Add the OpenAI-compatible routes to ``app``, answering from ``engine`` in ``batcher``'s batches."""
    serving = OpenAIServing(engine, batcher)

    @app.get("/v1/models", response_model=ModelList, responses=MODEL_ERRORS, tags=["OpenAI-compatible"])
    async def models() -> Any:
        """The decoder adapters, which /v1/completions and /v1/chat/completions answer for, in OpenAI's list
        shape (GET /v1/adapters lists every adapter)."""
        return serving.models()

    @app.post("/v1/completions", response_model=CompletionResponse, tags=["OpenAI-compatible"],
              responses={200: {"content": _stream("text_completion")}, **COMPLETION_ERRORS})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Completions of raw prompts by the adapter named in `model`, in OpenAI's shapes, batched with every
        other generation of the server. Greedy unless temperature > 0."""
        return await serving.completion(body, request)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["OpenAI-compatible"],
              responses={200: {"content": _stream("chat.completion.chunk")}, **COMPLETION_ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """The next assistant message, the conversation rendered by the backbone tokenizer's chat template (a
        backbone without one is refused: code chat_template_missing)."""
        return await serving.chat(body, request)

    openapi = app.openapi

    def schema() -> dict[str, Any]:
        # FastAPI documents a 422 for every route with a body; these answer a bad body with OpenAI's 400 instead.
        if app.openapi_schema is None:
            document = openapi()
            for path in PATHS:
                for operation in document["paths"].get(path, {}).values():
                    operation["responses"].pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            if "/HTTPValidationError" not in json.dumps(document["paths"]):  # FastAPI's {"detail": ...}: never sent
                schemas.pop("HTTPValidationError", None)
                schemas.pop("ValidationError", None)
        return app.openapi_schema

    app.openapi = schema
