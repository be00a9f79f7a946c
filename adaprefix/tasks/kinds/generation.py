"""Prompt -> completion generation for decoders (``*ForCausalLM``): the loss on the completion only, greedy
generation for exact match at evaluation and prediction.

Encoding (:meth:`GenerationTask.encode`):

- The prompt is tokenized on its own, with the tokenizer's special tokens (Llama's BOS; GPT-2 adds none), exactly as
  it is tokenized at generation time. ``prompt + completion`` is tokenized as one text and the completion's tokens
  are what follows the prompt's; where a token merges across the boundary (the joint tokens do not start with the
  prompt's), the completion is tokenized on its own instead, so the prompt the model trains on is always the prompt
  it is given at generation. Put the separating space where the text has it (``"Answer:"`` + ``" yes"``).
- EOS is appended to every completion and counted in the loss, so the model learns to stop; a tokenizer without an
  EOS token is refused.
- Labels are -100 on the prompt and on padding: the loss is the mean negative log-likelihood of the completion
  tokens (EOS included) given everything before them.
- Over ``max_length``, the prompt loses tokens from its start (the leading special tokens are kept, and the end of
  the prompt, which usually holds the question, survives) down to half the budget; past that the completion is cut
  at its end. Such examples are counted as truncated.

Padding: training batches are right-padded (real tokens keep positions 0..n-1); generation batches are left-padded so
that every prompt ends at the last column and the new tokens follow it directly. A tokenizer without a pad token pads
with EOS: padding is masked out of attention and labelled -100, so EOS keeps its meaning.

Metrics: ``completion_loss`` (token-level mean NLL over every completion token of the split; transformers' own
``loss`` is a mean of per-batch means) and ``perplexity`` = exp(completion_loss), from the Trainer's evaluation; and
``exact_match`` from greedy generation (:func:`normalize_answer` on both sides), combined into one record by the
training loop. The main metric is exact match.
"""

from __future__ import annotations

import math
import threading
import unicodedata
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..base import EncodedSplit, Example, Task
from ..errors import TokenizerError
from ..metrics import IGNORE_INDEX, logits_of
from .encoding import resolve_length

#: Tokens generated beyond the longest reference completion (+ its EOS): room to see a model that runs on.
GENERATION_MARGIN = 8


def normalize_answer(text: str) -> str:
    """The form in which a generated and a reference completion are compared for exact match.

    Unicode NFKC (full-width and compatibility characters read as their plain forms), case-folded, runs of
    whitespace (newlines included) collapsed to one space, leading and trailing space stripped, then trailing
    punctuation dropped ("Yes." and " yes" are the same answer; "yes, because" is not "yes").
    """
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    while text and unicodedata.category(text[-1]).startswith("P"):
        text = text[:-1].rstrip()
    return text


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after :func:`normalize_answer`; NaN for none."""
    if not references:
        return float("nan")
    return float(np.mean([normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)]))


def prepare_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer as generation tasks use it: an EOS token is required, a missing pad token becomes EOS."""
    if tokenizer.eos_token_id is None:
        raise TokenizerError(
            f"{type(tokenizer).__name__} has no EOS token; a completion needs one to end on (the model learns to "
            "stop there). Use a decoder's tokenizer, or set tokenizer.eos_token before training."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # masked and labelled -100 wherever it pads
    return tokenizer


def leading_specials(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts before a text (1 for Llama's BOS, 0 for GPT-2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return max(len(with_special) - len(without), 0)


def cut_prompt(ids: list[int], keep: int, lead: int) -> list[int]:
    """``ids`` cut to ``keep`` tokens from the start, the first ``lead`` (special) tokens kept."""
    if len(ids) <= keep:
        return ids
    lead = min(lead, keep - 1) if keep > 1 else 0
    return ids[:lead] + ids[len(ids) - (keep - lead):]


@dataclass
class CompletionCollator:
    """Pad ``input_ids`` / ``attention_mask`` / ``labels`` rows to the batch's longest.

    ``side="right"`` for training and loss evaluation, ``"left"`` for generation. Padding takes ``pad_token_id``
    in ``input_ids``, 0 in ``attention_mask`` and -100 in ``labels``.
    """

    pad_token_id: int
    side: str = "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        fills = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, fill in fills.items():
            if key not in features[0]:
                continue
            rows = []
            for f in features:
                pad = [fill] * (width - len(f[key]))
                rows.append(pad + list(f[key]) if self.side == "left" else list(f[key]) + pad)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch


class GenerationTask(Task):
    """Prompt -> completion for a causal LM: loss on the completion, exact match of greedy generations.

    Subclasses implement :meth:`format` (an example's prompt and reference completion) and may score generations
    their own way (:meth:`score`, e.g. accuracy of verbalised labels).
    """

    kind = "generation"
    metric_names = ("exact_match", "completion_loss", "perplexity")
    main_metric = "exact_match"
    # Decoder prompts hold the whole input (passage, question and the answer cue), hence longer than 128.
    default_max_length = 256

    @abstractmethod
    def format(self, example: Example) -> tuple[str, str | None]:
        """``(prompt, completion)`` of one example; the completion is None where the example has none."""

    def auto_model_class(self) -> type:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def load_tokenizer(self, path: str | Path, model_type: str | None = None) -> Any:
        """The backbone's tokenizer with an EOS token and a pad token (EOS where it has none)."""
        from transformers import AutoTokenizer

        return prepare_tokenizer(AutoTokenizer.from_pretrained(path))

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        tokenizer = prepare_tokenizer(tokenizer)
        max_length = resolve_length(tokenizer, max_length)
        pairs = [self.format(ex) for ex in examples]
        prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True, verbose=False)["input_ids"]
        labelled = [i for i, (_, c) in enumerate(pairs) if c is not None]
        joint = tokenizer([pairs[i][0] + pairs[i][1] for i in labelled], add_special_tokens=True,
                          verbose=False)["input_ids"] if labelled else []
        completions: list[list[int] | None] = [None] * len(pairs)
        for i, ids in zip(labelled, joint):
            prompt = prompts[i]
            if ids[:len(prompt)] == prompt:
                completions[i] = ids[len(prompt):]
            else:  # a token merged across the boundary: keep the prompt as generation will see it
                completions[i] = tokenizer(pairs[i][1], add_special_tokens=False)["input_ids"]
        lead = leading_specials(tokenizer)
        eos = tokenizer.eos_token_id
        rows, truncated = [], []
        for prompt, completion in zip(prompts, completions):
            target = (completion or []) + [eos] if completion is not None else []
            truncated.append(len(prompt) + len(target) > max_length)
            if truncated[-1]:
                keep = max(max_length - len(target), min(len(prompt), max_length // 2))
                prompt = cut_prompt(prompt, keep, lead)
                target = target[: max_length - len(prompt)]
            ids = prompt + target
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": [IGNORE_INDEX] * len(prompt) + target})
        return EncodedSplit(rows, truncated, has_labels=bool(labelled))

    def prompt_ids(self, examples: Sequence[Example], tokenizer: Any, max_length: int,
                   max_new_tokens: int) -> list[list[int]]:
        """The prompts' token ids for generation, cut from the same end as in training so that prompt + new tokens
        fit ``max_length``, the prompt keeping at least half of it. The new tokens' budget includes
        :data:`GENERATION_MARGIN`, which training's target does not, so a prompt that training cut is cut by up to
        that many more tokens here (on cb-t2t and rte-t2t at 256 tokens: 3 of the 333 dev prompts, 8 tokens)."""
        lead = leading_specials(tokenizer)
        keep = max(max_length - max_new_tokens, max_length // 2, 1)
        ids = tokenizer([self.format(ex)[0] for ex in examples], add_special_tokens=True, verbose=False)["input_ids"]
        return [cut_prompt(p, keep, lead) for p in ids]

    def max_new_tokens(self, examples: Sequence[Example], tokenizer: Any) -> int:
        """Tokens to generate for these examples: the longest reference completion, its EOS and
        :data:`GENERATION_MARGIN`."""
        completions = [c for _, c in (self.format(ex) for ex in examples) if c is not None]
        longest = max((len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]),
                      default=0) if completions else 0
        return longest + 1 + GENERATION_MARGIN

    def collator(self, tokenizer: Any) -> Any:
        return CompletionCollator(prepare_tokenizer(tokenizer).pad_token_id, side="right")

    # -- metrics ----------------------------------------------------------------------------------
    @staticmethod
    def preprocess_logits_for_metrics(logits: Any, labels: Any) -> Any:
        """Per example, the summed NLL of its labelled tokens and their count: ``(batch, 2)``.

        Keeps the Trainer from gathering ``(examples, tokens, vocabulary)`` logits for the whole split.
        """
        import torch

        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        shifted, targets = logits[:, :-1].float(), labels[:, 1:]  # token t is predicted at position t-1
        mask = targets != IGNORE_INDEX
        nll = torch.nn.functional.cross_entropy(shifted.transpose(1, 2), targets.clamp(min=0), reduction="none")
        return torch.stack([(nll * mask).sum(-1), mask.sum(-1).float()], dim=-1)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        """``completion_loss`` (mean NLL per completion token over the split) and ``perplexity``, from per-example
        ``(summed NLL, token count, ...)`` rows."""
        sums = logits_of(eval_pred.predictions)
        sums = sums.reshape(-1, sums.shape[-1])
        tokens = float(sums[:, 1].sum())
        if tokens == 0:
            return {"completion_loss": float("nan"), "perplexity": float("nan")}
        loss = float(sums[:, 0].sum()) / tokens
        return {"completion_loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def score(self, examples: Sequence[Example], generated: Sequence[str]) -> dict[str, float]:
        """Metrics of greedy generations against the examples' reference completions: exact match."""
        references = [self.format(ex)[1] for ex in examples]
        kept = [(g, r) for g, r in zip(generated, references) if r is not None]
        return {"exact_match": exact_match([g for g, _ in kept], [r for _, r in kept])}

    def describe(self, example: Example, generated: str) -> dict[str, Any]:
        """What ``adaprefix predict`` reports for one generation."""
        return {"prediction": generated}


# id of a model whose generation config is blanked -> [its own config, how many blocks hold it blank]. Shared by
# threads: the first block in saves and blanks, the last one out restores, in whatever order they leave.
_BLANKED: dict[int, list[Any]] = {}
_BLANKED_LOCK = threading.Lock()


@contextmanager
def own_generation_config(model: Any) -> Iterator[None]:
    """For the block, ``model.generate`` sees no generation config of the model's own.

    transformers fills every field a passed ``GenerationConfig`` leaves unset from ``model.generation_config``, so an
    Instruct checkpoint's ``repetition_penalty``, ``no_repeat_ngram_size``, ``suppress_tokens`` or ``min_new_tokens``
    would steer a "greedy" evaluation away from the argmax. The model's config (under PEFT, its base model's: the
    one ``generate`` reads) is a blank one until the last of the blocks open on that model ends, so that threads
    generating with one model at once never leave it blank, nor restore it under another thread's generation.
    """
    from transformers import GenerationConfig

    target, seen = model, set()
    while hasattr(target, "get_base_model") and id(target) not in seen:  # PEFT: generate() runs on the base model
        seen.add(id(target))
        target = target.get_base_model()
    if getattr(target, "generation_config", None) is None:
        yield
        return
    key = id(target)
    with _BLANKED_LOCK:
        held = _BLANKED.get(key)
        if held is None:
            own, target.generation_config = target.generation_config, GenerationConfig()
            _BLANKED[key] = [own, 1]  # only once blanked: a failure above leaves no holder behind
        else:
            held[1] += 1
    try:
        yield
    finally:
        with _BLANKED_LOCK:
            held = _BLANKED[key]
            held[1] -= 1
            if held[1] == 0:
                del _BLANKED[key]
                target.generation_config = held[0]


def generate_completions(model: Any, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int,
                         batch_size: int = 32, adapter_names: Sequence[str] | None = None) -> list[str]:
    """Greedy completions of tokenized prompts, decoded without special tokens, in the prompts' order. A completion
    is cut at the first EOS; special tokens other than EOS are dropped in decoding, so " yes" followed by another
    end-of-text token (never EOS) reads as " yes".
    ``adapter_names`` (one per prompt) routes each prompt through its own adapter of a multi-adapter model.

    Prompts are batched by length (fewer pad tokens), left-padded, and generated with the KV cache; each completion
    ends at the first EOS (or after ``max_new_tokens``). The model's own generation config (sampling, penalties,
    suppressed tokens) is not used (:func:`own_generation_config`): each token is the argmax, so that a run's exact
    match is reproducible and is what the loss pass's greedy check predicts.
    """
    import torch
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id  # None (a raw language-model adapter's tokenizer may have none): run to the budget
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise TokenizerError(f"{type(tokenizer).__name__} has neither a pad nor an EOS token, so prompts of "
                             "different lengths cannot share a batch; set tokenizer.pad_token")
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=pad, use_cache=True)
    collate = CompletionCollator(pad, side="left")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts: list[str] = [""] * len(prompts)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batch = collate([{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in chosen])
                routing = {"adapter_names": [adapter_names[i] for i in chosen]} if adapter_names is not None else {}
                with own_generation_config(model):
                    out = model.generate(**{k: v.to(device) for k, v in batch.items()}, generation_config=config,
                                         **routing)
                for i, row in zip(chosen, out[:, batch["input_ids"].shape[1]:].tolist()):
                    if eos is not None and eos in row:
                        row = row[:row.index(eos)]
                    texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return texts
