"""How ``adaprefix serve`` batches, and what one request may ask of it: :class:`Settings`, the one source of each
setting's default and help (``adaprefix serve``'s flags are made from them). Light to import: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import AdaprefixError

OVERFLOW = ("truncate", "refuse")
BATCHING = ("mixed", "per-adapter")


class ServeError(AdaprefixError, ValueError):
    """A run folder cannot be served beside the others, or a setting is out of range; the message names it."""


def _setting(default, help: str):  # noqa: A002 - the name typer and argparse give it
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    """How the server batches, treats over-long inputs, and what one request may ask (its admission limits)."""

    max_batch_size: int = _setting(32, "Most inputs per forward.")
    max_wait_ms: float = _setting(5.0, "How long the first input of a batch waits for others (ms).")
    on_overflow: str = _setting("truncate", "An input over the run's max_length: truncate (flagged in the answer) or "
                                            "refuse (422).")
    batching: str = _setting("mixed", "mixed: any adapters in one forward; per-adapter: one adapter per forward, as "
                                      "a single-adapter server must (for comparison).")
    max_new_tokens: int = _setting(256, "Most new tokens a /v1/generate request may ask for (422 past it).")
    max_body_bytes: int = _setting(2 * 2**20, "Largest request body in bytes, checked before it is read (413).")
    max_inputs: int = _setting(1024, "Most inputs per request (413).")
    max_request_tokens: int = _setting(2**17, "Most tokens per request, its inputs as encoded, after any truncation "
                                              "(413).")
    max_queue: int = _setting(4096, "Most inputs admitted and not yet answered, all requests together; a request "
                                    "past it gets 429 with Retry-After. At least --max-inputs.")

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_new_tokens", "max_body_bytes", "max_inputs", "max_request_tokens",
                     "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ServeError(f"{name}: expected a positive integer, got {value!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise ServeError(f"max_wait_ms: expected a number >= 0, got {self.max_wait_ms!r}")
        if self.on_overflow not in OVERFLOW:
            raise ServeError(f"on_overflow: expected one of {', '.join(OVERFLOW)}, got {self.on_overflow!r}")
        if self.batching not in BATCHING:
            raise ServeError(f"batching: expected one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.max_queue < self.max_inputs:  # a request of max_inputs could then never be admitted
            raise ServeError(f"max_queue: {self.max_queue} is below max_inputs ({self.max_inputs}); a request of "
                             "max_inputs inputs would always be refused")

    @classmethod
    def default(cls, name: str):
        """The default of setting ``name``."""
        return next(f.default for f in fields(cls) if f.name == name)

    @classmethod
    def help(cls, name: str) -> str:
        """The help of setting ``name`` (the flag's help)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)
