"""What the OpenAI-compatible routes read and write: OpenAI's request fields (those this server can honour), its
answer and stream-chunk shapes, and its error shape.

Request bodies are as strict as the rest of the server's (:mod:`adaprefix.serve.protocol`): a field of the wrong
type, an unknown field, a lone surrogate are refused naming the field. OpenAI fields that this server cannot honour
(``n`` > 1, ``logprobs``, ``echo``, ``best_of`` > 1, ``suffix``, ``logit_bias``, penalties) are declared, so that
the schema shows them, and refused by name unless they carry their no-op value; any other field is unknown and
refused as well. Nothing is silently ignored except ``user``, which only identifies the caller.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ..protocol import RETRY_AFTER, StrictBody

#: The routes that answer in OpenAI's shapes, their errors included.
PATHS = ("/v1/models", "/v1/completions", "/v1/chat/completions")
#: OpenAI's default budget when max_tokens is absent.
DEFAULT_MAX_TOKENS = 16
#: OpenAI's limit on stop strings per request.
MAX_STOP = 4


def is_openai(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes, which answer errors in OpenAI's shape."""
    return path.rstrip("/") in PATHS


class OpenAIError(BaseModel):
    message: str = Field(description="What is wrong, naming the field or limit, and what to do about it.")
    type: str = Field(description="invalid_request_error (4xx but 429), rate_limit_error (429), server_error (500).")
    param: Optional[str] = Field(description="The request field at fault, where one is.")
    code: Optional[str] = Field(description="A stable name for the error where it has one: model_not_found, "
                                            "context_length_exceeded, unsupported_parameter, chat_template_missing, "
                                            "request_too_large, rate_limit_exceeded.")


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible routes, in OpenAI's shape, whatever its status."""

    error: OpenAIError


def error_content(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An error body in OpenAI's shape."""
    kind = {429: "rate_limit_error", 500: "server_error"}.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _documented(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": OpenAIErrorResponse, "description": description, **extra}


MODEL_ERRORS = {500: _documented("An unexpected failure; the server's log has its traceback.")}
#: The errors the OpenAI-compatible POST routes answer. As OpenAI's API, a body this server cannot take is a 400
#: (not the 422 of the server's own routes).
COMPLETION_ERRORS = {
    400: _documented("A malformed body (the field is named in `param`), an unsupported OpenAI field, a prompt over "
                     "the model's positions, max_tokens over --max-new-tokens, or (chat) a backbone without a chat "
                     "template."),
    404: _documented("No adapter of that name (code model_not_found)."),
    413: _documented("Over a limit of this server: body size (--max-body-bytes), prompts per request (--max-inputs) "
                     "or tokens per request (--max-request-tokens)."),
    429: _documented("The queue is full (--max-queue): try again after Retry-After seconds.", headers=RETRY_AFTER),
    **MODEL_ERRORS,
}


# Requests ----------------------------------------------------------------------------------------------------------

def _refuse(field: str, value: Any, why: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", "{value} is not supported: {why}",
                               {"value": repr(value), "why": why, "field": field})


#: OpenAI fields declared but not honoured: (value that asks nothing, why any other is refused).
UNSUPPORTED = {
    "n": (1, "this server returns one choice per prompt; leave n out or send 1"),
    "best_of": (1, "this server generates one candidate per prompt; leave best_of out or send 1"),
    "echo": (False, "the answer holds the completion only; leave echo out or send false"),
    "logprobs": (None, "this server returns no log-probabilities; leave logprobs out"),
    "top_logprobs": (None, "this server returns no log-probabilities; leave top_logprobs out"),
    "suffix": (None, "this server completes after the prompt only (no insertion); leave suffix out"),
    "logit_bias": (None, "this server applies no logit bias; leave logit_bias out"),
    "frequency_penalty": (0, "this server applies no penalties; leave frequency_penalty out or send 0"),
    "presence_penalty": (0, "this server applies no penalties; leave presence_penalty out or send 0"),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = Field(False, description="Send a last chunk with the usage and no choices.")


class _Sampled(StrictBody):
    """The fields /v1/completions and /v1/chat/completions share: the adapter, the budget and the decoding."""

    model: StrictStr = Field(description="The adapter's name (GET /v1/models lists them).")
    max_tokens: Optional[int] = Field(None, ge=1, strict=True,
                                      description=f"Tokens to generate per prompt (default {DEFAULT_MAX_TOKENS}); at "
                                                  "most the server's --max-new-tokens.")
    temperature: Optional[float] = Field(None, ge=0, le=2, strict=True,
                                         description="0, or absent: greedy, exactly as /v1/generate and `adaprefix "
                                                     "predict` (absent is greedy here, not OpenAI's 1). Above 0: "
                                                     "sampled at that temperature.")
    top_p: Optional[float] = Field(None, gt=0, le=1, strict=True,
                                   description="Nucleus sampling: draw from the smallest set of tokens whose "
                                               "probability reaches top_p. Only with temperature > 0.")
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**64 - 1, strict=True,
                                description="Seeds this prompt's own random stream: the same seed, prompt and "
                                            "settings give the same text, whatever shares the batch.")
    stop: Optional[Union[StrictStr, list[StrictStr]]] = Field(
        None, description=f"Up to {MAX_STOP} strings; the text ends before the first one generated "
                          '(finish_reason "stop").')
    stream: Optional[StrictBool] = Field(None, description="Answer as server-sent events, text as it is generated, "
                                                           "ending with `data: [DONE]`.")
    stream_options: Optional[StreamOptions] = Field(None, description="Only with stream.")
    n: Optional[int] = Field(None, strict=True, description="Only 1.")
    logprobs: Optional[Any] = Field(None, description="Not supported: leave it out.")
    logit_bias: Optional[dict[str, Any]] = Field(None, description="Not supported: leave it out (or {}).")
    frequency_penalty: Optional[float] = Field(None, strict=True, description="Only 0.")
    presence_penalty: Optional[float] = Field(None, strict=True, description="Only 0.")
    user: Optional[StrictStr] = Field(None, description="Who asks, for the caller's records; it changes nothing.")

    @field_validator("top_p")
    @classmethod
    def _top_p_samples(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and value < 1 and not info.data.get("temperature"):
            raise PydanticCustomError("greedy_top_p", "{value} applies only when sampling, but temperature is 0 or "
                                      "absent (greedy); send a temperature above 0 to sample",
                                      {"value": value})
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise PydanticCustomError("too_many_stops", "{count} stop strings; at most {limit}",
                                      {"count": len(stops), "limit": MAX_STOP})
        if "" in stops:
            raise PydanticCustomError("empty_stop", "an empty stop string would end every completion at once; "
                                      "send non-empty strings", {})
        return value

    @field_validator("stream_options")
    @classmethod
    def _with_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError("not_streaming", "only allowed when stream is true", {})
        return value

    @field_validator("n", "best_of", "echo", "logprobs", "top_logprobs", "suffix", "logit_bias", "frequency_penalty",
                     "presence_penalty", check_fields=False)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        harmless, why = UNSUPPORTED[info.field_name]
        same_kind = isinstance(value, bool) == isinstance(harmless, bool)  # True == 1, but n=true is not n=1
        if value is None or (same_kind and value == harmless) or (info.field_name == "logit_bias" and value == {}):
            return value
        raise _refuse(info.field_name, value, why)

    @property
    def budget(self) -> int:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Sampled):
    """POST /v1/completions: OpenAI's legacy completions request, the adapter named by ``model``."""

    prompt: Union[StrictStr, list[StrictStr]] = Field(
        description="A prompt, or a list of prompts (one choice each, in order), as given: no template applied. "
                    "Token-id prompts are not supported.")
    best_of: Optional[int] = Field(None, strict=True, description="Only 1.")
    echo: Optional[StrictBool] = Field(None, description="Only false.")
    suffix: Optional[StrictStr] = Field(None, description="Not supported: leave it out.")

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("no_prompt", "an empty list asks for nothing; send at least one prompt", {})
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(StrictBody):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatCompletionRequest(_Sampled):
    """POST /v1/chat/completions: the messages rendered by the backbone's chat template, the adapter named by
    ``model``."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far; text content only.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, strict=True,
                                                 description="OpenAI's newer name of max_tokens; send one of them.")
    top_logprobs: Optional[int] = Field(None, strict=True, description="Not supported: leave it out.")

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_budget(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("max_tokens") is not None:
            raise PydanticCustomError("two_budgets", "max_tokens is given too; send one of them", {})
        return value

    @property
    def budget(self) -> int:
        return self.max_completion_tokens if self.max_completion_tokens is not None else super().budget


# Answers -----------------------------------------------------------------------------------------------------------

class ModelCard(BaseModel):
    id: str = Field(description="The adapter's name: what `model` takes.")
    object: Literal["model"] = "model"
    created: int = Field(description="When this server started (Unix seconds).")
    owned_by: str = "adaprefix"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="Tokens generated; an ending EOS counts, a stop string's tokens too.")
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
