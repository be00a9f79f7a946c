"""Per-row decoding inside one batched ``generate()`` call: each prompt of a batch keeps its own sampling settings,
random stream, stop strings, text stream and cancellation, whatever its batch-mates ask.

transformers' ``generate`` takes one generation config per call, and its sampling draws every row from one global
random stream, so a row's sample would depend on what shares its batch. Here the call is greedy (``argmax``) and
:class:`RowSampler`, a logits processor, draws each sampling row's token itself, from the row's own
``torch.Generator`` seeded by the request, then leaves that token the only finite score so that ``argmax`` takes
it. Greedy rows are untouched, so a greedy row is exactly what ``generate`` gives it alone. :class:`RowWatcher`, a
stopping criterion called after every step, ends a row at EOS, at a stop string, or when its client has gone away,
and hands each streaming row the new text that can no longer change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger("adaprefix.serve")

#: finish_reason of a completion that ended at EOS or a stop string, and of one that used its whole budget.
STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class Sampling:
    """How one prompt is decoded: greedy at temperature 0, else sampled at ``temperature`` from the smallest set of
    tokens whose probability reaches ``top_p``, from a random stream seeded by ``seed`` (fresh entropy if None)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One prompt's completion: its text (cut before any stop string), why it ended, and the tokens it generated
    (the ending EOS, or the tokens that completed a stop string, included)."""

    text: str
    finish_reason: str
    tokens: int


@dataclass
class Stream:
    """Where a streaming prompt's text goes: ``send(delta, completion)`` is called on the forward thread with each
    new piece of text, and once more with the :class:`Completion` when the prompt ends. ``sent`` is the text sent so
    far, kept across tries, so that a prompt run again (its shared forward failed) sends nothing twice."""

    send: Callable[[str, Completion | None], None]
    sent: str = ""


@dataclass
class RowState:
    """What the watcher knows of one row of the batch."""

    sampling: Sampling
    stream: Stream | None
    cancelled: Callable[[], bool]
    ids: list[int] = field(default_factory=list)
    done: Completion | None = None

    @property
    def watched(self) -> bool:
        """Decoded at every step: it has stop strings to find or text to stream."""
        return bool(self.sampling.stop) or self.stream is not None


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class RowSampler:
    """A logits processor drawing each sampling row's next token from its own random stream (module docstring)."""

    def __init__(self, settings: Sequence[Sampling], device: torch.device):
        self.rows = [(i, s, _generator(s.seed, device)) for i, s in enumerate(settings) if not s.greedy]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, sampling, generator in self.rows:
            logits = scores[i].double()  # in float32 a temperature of 1e-300 would be 0
            # Shifted so that the largest is 0 before dividing: a temperature near 0 then gives -inf, not
            # inf - inf = nan, and the draw is the greedy token, as the limit should be.
            logits = (logits - logits.max()) / sampling.temperature
            if sampling.top_p < 1:
                ordered, order = torch.sort(logits, descending=True)
                cumulative = ordered.softmax(-1).cumsum(-1)
                # Drop a token once the more likely ones already reach top_p; the most likely always stays.
                dropped = cumulative - ordered.softmax(-1) >= sampling.top_p
                dropped[0] = False  # also where top_p is below float32's least (5e-324 compares as 0)
                logits = logits.scatter(0, order, ordered.masked_fill(dropped, float("-inf")))
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None


def settled(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` (the row's decoded text so far, no stop string in it) no later token can change: up to
    its last whitespace (a tokenizer may join or clean up a word with the next token: WordPiece's ``##``, the space
    before punctuation), and before any ending that could be the start of a stop string."""
    end = max(text.rfind(c) for c in (" ", "\n", "\t"))
    end = max(end, 0)
    for stop in stops:
        for start in range(max(0, len(text) - len(stop) + 1), len(text)):
            if stop.startswith(text[start:]):
                end = min(end, start)
                break
    return end


class RowWatcher:
    """A stopping criterion that ends rows at EOS, a stop string or cancellation, and streams their text."""

    def __init__(self, rows: Sequence[RowState], tokenizer: Any, eos: int | None, prompt_width: int,
                 max_new_tokens: int):
        self.rows = rows
        self.tokenizer = tokenizer
        self.eos = eos
        self.width = prompt_width
        self.max_new_tokens = max_new_tokens

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def finish(self, row: RowState, reason: str, text: str | None = None, eos: bool = False) -> None:
        """End ``row``: its text (decoded and cut at a stop string unless given) and the rest of its stream."""
        if text is None:
            text = self.decode(row.ids)
            at = find_stop(text, row.sampling.stop)
            if at is not None:
                text, reason = text[:at], STOP
        row.done = Completion(text, reason, len(row.ids) + eos)
        if row.stream is not None:
            if not text.startswith(row.stream.sent):  # a tokenizer whose decoding changed settled text: say so
                log.warning("streamed text %r is not a prefix of the completion %r", row.stream.sent, text)
            delta = text[len(row.stream.sent):] if text.startswith(row.stream.sent) else ""
            row.stream.sent += delta
            row.stream.send(delta, row.done)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        done = []
        for row, token in zip(self.rows, newest):
            if row.done is None:
                self.step(row, token)
            done.append(row.done is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def step(self, row: RowState, token: int) -> None:
        if row.cancelled():
            row.done = Completion("", "cancelled", len(row.ids))
            return
        if self.eos is not None and token == self.eos:
            self.finish(row, STOP, eos=True)  # the EOS counts as generated; the text ends before it
            return
        row.ids.append(token)
        if not row.watched:
            if len(row.ids) >= self.max_new_tokens:
                self.finish(row, LENGTH)
            return
        text = self.decode(row.ids)
        at = find_stop(text, row.sampling.stop)
        if at is not None:
            self.finish(row, STOP, text[:at])
        elif len(row.ids) >= self.max_new_tokens:
            self.finish(row, LENGTH, text)
        elif row.stream is not None:
            ready = text[:settled(text, row.sampling.stop)]
            if len(ready) > len(row.stream.sent) and ready.startswith(row.stream.sent):
                delta = ready[len(row.stream.sent):]
                row.stream.sent = ready
                row.stream.send(delta, None)
