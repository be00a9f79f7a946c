"""Errors raised by the task/data layer."""

from __future__ import annotations

from pathlib import Path

from ..errors import AdaprefixError


class DataError(AdaprefixError, ValueError):
    """Bad or missing task data.

    The message always says where (file, and line where there is one), which field, what was expected,
    what was found and what to do about it, so that a user can fix the data without reading code.
    The parts are also kept as attributes (``path``, ``line``, ``field``, ``expected``, ``got``, ``hint``).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        got: object = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.expected = expected
        self.got = got
        self.hint = hint
        parts: list[str] = []
        where = self.path or ""
        if where and line is not None:
            where = f"{where}:{line}"
        if where:
            parts.append(f"{where}:")
        if field is not None:
            parts.append(f"field {field!r}:")
        if message:
            parts.append(message.rstrip(".") + ".")
        if expected is not None:
            parts.append(f"Expected {expected}, got {_short(got)}.")
        if hint:
            parts.append(hint)
        super().__init__(" ".join(parts))


class TokenizerError(AdaprefixError, ValueError):
    """A tokenizer that cannot encode the task's inputs as the model expects; the message says how to load it."""


class SlowTokenizerError(TokenizerError, TypeError):
    """Token classification needs a fast tokenizer (for ``word_ids``); a slow one was given."""


class Verbatim(str):
    """A ``got`` value that is already a description: shown as it is, without quotes."""

    def __repr__(self) -> str:
        return str(self)


class UnknownTaskError(AdaprefixError, ValueError):
    """A task name that the registry does not know; the message lists the known names."""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
