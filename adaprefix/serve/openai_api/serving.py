"""The work behind the OpenAI-compatible routes: prompts (or rendered chat messages) as rows with their decoding
settings, admitted under the server's limits and run in the server's shared batches, answered whole or streamed.

Streaming is incremental: a streamed prompt's text goes to the client as it is generated, from inside the batched
``generate()`` call (:mod:`adaprefix.serve.decoding`), while other rows of the same forward, streamed or not, go on.
A piece is sent once no later token can change it (up to the last whitespace, short of a possible stop string's
start), so the streamed pieces join to exactly the text a non-streamed request gets. A client that goes away
mid-stream ends its prompts at their next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..admission import check_inputs, check_tokens, unless_gone
from ..batching import Batcher
from ..decoding import Completion, Sampling, Stream
from ..engine import Engine, InputError, Row
from .protocol import ChatCompletionRequest, CompletionRequest, error_content

log = logging.getLogger("adaprefix.serve")
_END = object()  # the stream's last queue item: the work is over


def _sampling(body: Any) -> Sampling:
    return Sampling(temperature=body.temperature or 0.0, top_p=body.top_p if body.top_p is not None else 1.0,
                    seed=body.seed, stop=body.stops)


def _usage(rows: list[Row], completions: list[Completion]) -> dict[str, int]:
    prompt = sum(row.tokens for row in rows)
    generated = sum(completion.tokens for completion in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


class OpenAIServing:
    """Answers /v1/models, /v1/completions and /v1/chat/completions for ``engine``'s decoder adapters."""

    def __init__(self, engine: Engine, batcher: Batcher):
        self.engine = engine
        self.batcher = batcher
        self.settings = engine.settings
        self.started = int(time.time())

    def models(self) -> dict[str, Any]:
        """The adapters these routes answer for (the decoder ones; /v1/adapters lists every adapter)."""
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": self.started,
                                            "owned_by": "adaprefix"}
                                           for served in self.engine.adapters.values() if served.generative]}

    async def completion(self, body: CompletionRequest, request: Request) -> Any:
        """A /v1/completions answer: OpenAI's ``text_completion``, whole or as a stream."""
        return await self._answer(body, request, body.prompts, "prompt", chat=False)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        """A /v1/chat/completions answer: the messages rendered by the backbone tokenizer's chat template, answered
        as OpenAI's ``chat.completion``, whole or as a stream; refused by name without a template."""
        served = self.engine.adapter(body.model)
        template = getattr(served.tokenizer, "chat_template", None) if served.generative else None
        if served.generative and not template:
            raise InputError(f"adapter {body.model!r}'s backbone tokenizer has no chat template, so /v1/chat/"
                             "completions cannot turn messages into a prompt; send the prompt written out to POST "
                             "/v1/completions", param="model", code="chat_template_missing")
        prompt = self._render(served, body) if served.generative else ""
        return await self._answer(body, request, [prompt], "messages", chat=True)

    def _render(self, served: Any, body: ChatCompletionRequest) -> str:
        from jinja2 import TemplateError

        messages = [message.model_dump() for message in body.messages]
        try:
            return served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as err:  # the template's own check, e.g. roles that must alternate
            raise InputError(f"messages: adapter {served.name!r}'s chat template refuses them: {err}",
                             param="messages") from None

    async def _answer(self, body: Any, request: Request, texts: list[str], field: str, chat: bool) -> Any:
        self.engine.adapter(body.model)  # an unknown name is a 404 whatever else is wrong
        budget_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        if body.budget > self.settings.max_new_tokens:
            raise InputError(f"{budget_field}: {body.budget} is over this server's limit of "
                             f"{self.settings.max_new_tokens} (--max-new-tokens)", param=budget_field)
        check_inputs(self.settings, len(texts), field)
        admission = contextlib.ExitStack()
        admission.enter_context(self.batcher.admit(len(texts)))
        try:
            # Tokenizing is CPU work: off the event loop, beside the forward thread. A prompt too long for the model
            # is refused, as OpenAI does: its answer has no place to say that a prompt was cut.
            rows = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.engine.prompts(body.model, texts, body.budget, ("model", field, budget_field),
                                                  add_special_tokens=not chat, on_overflow="refuse"))
            check_tokens(self.settings, rows, field)
        except BaseException:
            admission.close()
            raise
        for row in rows:
            row.sampling = _sampling(body)
        shape = _Shape(body.model, chat)
        if not body.stream:
            with admission:
                completions = await unless_gone(request, self.batcher.complete(rows, body.budget))
            return completions if not isinstance(completions, list) else shape.answer(rows, completions)
        return self._stream(rows, body, shape, admission)

    def _stream(self, rows: list[Row], body: Any, shape: "_Shape", admission: contextlib.ExitStack) -> Any:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for index, row in enumerate(rows):
            # Called on the forward thread: the piece joins the queue on the event loop's thread.
            row.stream = Stream(lambda delta, done, index=index: loop.call_soon_threadsafe(
                queue.put_nowait, (index, delta, done)))

        async def work() -> list[Completion]:
            try:
                return await self.batcher.complete(rows, body.budget)
            finally:
                admission.close()

        # The work runs whether or not the client reads the stream, so that its places in the queue are given back
        # in any case; the stream's end cancels it if the client went away.
        task = asyncio.ensure_future(work())
        task.add_done_callback(lambda _: queue.put_nowait(_END))
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(self._events(task, queue, rows, shape, usage), media_type="text/event-stream")

    async def _events(self, task: asyncio.Future, queue: asyncio.Queue, rows: list[Row], shape: "_Shape",
                      usage: bool) -> AsyncIterator[str]:
        try:
            if shape.chat:
                yield shape.event([shape.delta(i, {"role": "assistant", "content": ""}) for i in range(len(rows))])
            while (item := await queue.get()) is not _END:
                index, delta, done = item
                if delta or done is not None:
                    yield shape.event([shape.delta(index, delta, done.finish_reason if done else None)])
            if task.cancelled():
                return
            if task.exception() is not None:
                err = task.exception()
                log.error("streamed generation failed: %r", err)
                status = 400 if isinstance(err, InputError) else 500
                message = str(err) if status == 400 else (f"internal error ({type(err).__name__}); the server's "
                                                          "log has the details")
                yield f"data: {json.dumps(error_content(status, message))}\n\n"
            elif usage:
                yield shape.event([], _usage(rows, task.result()))
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away: its prompts end at their next token
                for row in rows:
                    row.cancelled = True
                task.cancel()
                log.info("a stream's client went away; its generation was dropped")


class _Shape:
    """OpenAI's shapes of a completion (``text_completion``) or a chat completion (``chat.completion``), whole and
    as stream chunks, for one request."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def answer(self, rows: list[Row], completions: list[Completion]) -> dict[str, Any]:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                        "finish_reason": c.finish_reason} for i, c in enumerate(completions)]
        else:
            choices = [{"text": c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                       for i, c in enumerate(completions)]
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": choices,
                "usage": _usage(rows, completions)}

    def delta(self, index: int, content: Any, finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = content if isinstance(content, dict) else ({"content": content} if content else {})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"text": content, "index": index, "logprobs": None, "finish_reason": finish_reason}

    def event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        chunk = {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"
