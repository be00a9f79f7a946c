"""What ``adaprefix serve`` reads and writes over HTTP: request and answer bodies, and the one error shape.

Bodies are strict: a field of the wrong JSON type (``"5"`` or ``true`` for a number), an unknown field, or a text
that is not Unicode (a lone UTF-16 surrogate such as ``"\\ud800"``, which no tokenizer can encode and no answer can
echo) is a 422 naming the field, never coerced or guessed.
"""

from __future__ import annotations

import math
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator
from pydantic_core import PydanticCustomError

Input = Union[StrictStr, list[StrictStr], dict[str, Any]]


def check_json_text(value: Any, where: str) -> None:
    """Refuse, naming where it sits, any string (key or value) in ``value`` that is not valid Unicode, and any
    non-finite number (Python's JSON reader takes ``NaN`` and ``1e999``; an answer echoing them could not be
    written as JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise PydanticCustomError(
                "not_unicode", "{where}: character {at} is a lone UTF-16 surrogate ({char}), which is not text; "
                "send whole characters (a surrogate pair, or the character itself)",
                {"where": where, "at": err.start, "char": ascii(value[err.start])}) from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("not_finite", "{where}: {value} is not a finite number",
                                  {"where": where, "value": repr(value)})
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json_text(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_text(key, f"{where} (a key)")
            check_json_text(item, f"{where}.{key}")


class StrictBody(BaseModel):
    """A request body (or a part of one) read strictly: unknown fields, non-text strings and non-finite numbers are
    refused by name (the module docstring)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not silently ignored

    @model_validator(mode="after")
    def _unicode(self) -> "StrictBody":
        for name in type(self).model_fields:
            check_json_text(getattr(self, name), name)
        return self


class PredictRequest(StrictBody):
    adapter: StrictStr = Field(description="The adapter's name (GET /v1/adapters lists them).")
    inputs: list[Input] = Field(
        min_length=1,
        description="Examples in the task's own format, as `adaprefix predict --file` reads jsonl (e.g. "
                    '{"premise": ..., "hypothesis": ...} for CB/RTE, {"tokens": [...]} for NER: a list of words), or '
                    "a text, or [text, text_pair], where the task has one or two texts. At most the server's "
                    "--max-inputs, of --max-request-tokens tokens in all.")


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]] = Field(
        description="One per input, as `adaprefix predict --output` writes them: the input, then label and scores "
                    '(or tags: one per given word); "truncated": true where the input was cut to the adapter\'s '
                    "max_length (a tagging answer then has tags for the words kept).")


class GenerateRequest(StrictBody):
    adapter: StrictStr = Field(description="A decoder adapter's name: a language-model adapter, or a run of a "
                                           "generation task (whose /v1/predict also answers inputs in the task's own "
                                           "format).")
    inputs: list[StrictStr] = Field(min_length=1, description="Prompts, as given (no task template applied).")
    max_new_tokens: int = Field(32, ge=1, strict=True,
                                description="Tokens to generate per prompt (greedy); at most the server's "
                                            "--max-new-tokens.")


class GenerateResponse(BaseModel):
    completions: list[str]
    truncated: list[int] = Field(default_factory=list,
                                 description="Indices of prompts cut from their start to leave room for max_new_tokens "
                                             "within the model's positions.")


class ErrorResponse(BaseModel):
    """Every error the server sends, whatever its status."""

    error: str = Field(description="What is wrong, naming the field or limit, and what to do about it.")


def _documented(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description, **extra}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 1}}}
#: The errors each kind of route can answer, for its OpenAPI entry.
SERVER_ERRORS = {500: _documented("An unexpected failure; the server's log has its traceback.")}
REQUEST_ERRORS = {
    400: _documented("A body that is not text (not UTF-8), so not JSON either."),
    404: _documented("No adapter of that name."),
    413: _documented("Over a limit of this server: body size (--max-body-bytes), inputs per request (--max-inputs) "
                     "or tokens per request (--max-request-tokens)."),
    422: _documented("A malformed body, or inputs that do not fit the adapter's task."),
    429: _documented("The queue is full (--max-queue): try again after Retry-After seconds.", headers=RETRY_AFTER),
    **SERVER_ERRORS,
}
