"""The Task interface and the three kinds of task (sequence classification, multiple choice, token
classification) with their encoding, collation and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .collators import MultipleChoiceCollator
from .errors import DataError
from .metrics import IGNORE_INDEX, accuracy, logits_of, macro_f1, seqeval_scores, tag_sequences

KINDS = ("sequence-classification", "multiple-choice", "token-classification")

# Every task uses the split names train / dev / test; the other names are accepted as aliases.
SPLIT_ALIASES = {
    "train": "train",
    "dev": "dev",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "test": "test",
}

Example = dict[str, Any]


def canonical_split(split: str) -> str:
    """Map a split name or alias (val, valid, validation) to one of train / dev / test."""
    try:
        return SPLIT_ALIASES[split.lower()]
    except (KeyError, AttributeError):
        raise DataError(
            f"unknown split {split!r}", hint=f"Use one of train, dev, test (aliases: {sorted(SPLIT_ALIASES)})."
        ) from None


@dataclass
class EncodedSplit:
    """Model features of one split, ready for the task's collator.

    ``dataset`` is a ``datasets.Dataset`` whose rows hold ``input_ids``, ``attention_mask``
    (``token_type_ids`` where the tokenizer makes them) and ``labels`` (-100 where unlabelled).
    ``num_truncated`` counts examples that were longer than ``max_length`` and were cut.
    """

    dataset: Any
    num_examples: int
    num_truncated: int
    has_labels: bool

    def __len__(self) -> int:
        return self.num_examples


class Task(ABC):
    """A task: how to load its data, turn examples into model features, batch them and score them.

    Subclasses set the class attributes below. Splits are named ``train``, ``dev`` and ``test``
    (``val``/``valid``/``validation`` are aliases of ``dev``).
    """

    name: str = ""
    kind: str = ""
    metric_names: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    eval_split: str = "dev"
    #: split with gold labels to report final numbers on; None where the test split is unlabelled.
    test_split: str | None = None
    #: Truncation length when the run sets none: None means the tokenizer's own limit (``model_max_length``).
    default_max_length: int | None = 128

    def __init__(self, labels: Sequence[str] | None = None) -> None:
        self._labels: list[str] | None = list(labels) if labels is not None else None

    # -- labels ---------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Label names; index = label id."""
        return self.labels_for(None)

    def labels_for(self, data_dir: str | Path | None) -> list[str]:
        """Label names, collecting them from the train split under ``data_dir`` if the task has no
        fixed set (NER tasks without one, custom tasks without ``labels=``)."""
        if self._labels is None:
            self._labels = self._collect_labels(data_dir)
        return self._labels

    def _collect_labels(self, data_dir: str | Path | None) -> list[str]:
        raise NotImplementedError(f"task {self.name!r} has no label set")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def auto_model_class(self) -> type:
        """The transformers Auto class whose head fits this task's kind."""
        import transformers

        return {
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "multiple-choice": transformers.AutoModelForMultipleChoice,
            "token-classification": transformers.AutoModelForTokenClassification,
        }[self.kind]

    # -- data -----------------------------------------------------------------------------------
    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        """Read and validate the raw examples of ``split`` (train / dev / test).

        Every example carries ``source`` ("file:line") and ``label`` (an id, or None when the split
        is unlabelled). Raises :class:`DataError` for missing files and malformed or empty data.
        """
        split = canonical_split(split)
        examples = self._load(split, data_dir)
        if not examples:
            where = self.split_location(split, data_dir)
            raise DataError(
                f"split {split!r} of task {self.name!r} has no examples", path=where,
                hint="The file is empty or holds only blank/header lines.",
            )
        return examples

    @abstractmethod
    def _load(self, split: str, data_dir: str | Path | None) -> list[Example]: ...

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        """Where the split's file is (or would be); None when it cannot be told."""
        return None

    def has_split(self, split: str, data_dir: str | Path | None = None) -> bool:
        """Whether the split's file is present (no hub look-up)."""
        loc = self.split_location(canonical_split(split), data_dir)
        return bool(loc) and Path(loc).is_file()

    @abstractmethod
    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        """Tokenize ``examples`` into model features (truncating to ``max_length`` tokens)."""

    @abstractmethod
    def collator(self, tokenizer: Any) -> Any:
        """A data collator for this task's encoded features."""

    @abstractmethod
    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        """Metrics from a ``transformers.EvalPrediction`` (``predictions`` = logits, ``label_ids``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def tokenizer_limit(tokenizer: Any) -> int:
    """The tokenizer's own length limit; 512 where it reports none (transformers' "very large" sentinel)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 100_000 else 512


def _max_length(tokenizer: Any, max_length: int | None) -> int:
    return int(max_length) if max_length is not None else tokenizer_limit(tokenizer)


def _label_of(ex: Example) -> int:
    label = ex.get("label")
    return IGNORE_INDEX if label is None else int(label)


def tokenize_texts(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int
) -> tuple[list[dict[str, list[int]]], list[bool]]:
    """Tokenize texts (or text pairs); only inputs over ``max_length`` are truncated.

    Pairs are cut with ``longest_first`` (tokens come off the longer member first), so a short
    question or hypothesis survives a long passage. Returns the features and a truncated flag for each.
    """
    full = tokenizer(texts, pairs, truncation=False, verbose=False)
    keys = list(full.keys())
    feats = [{k: full[k][i] for k in keys} for i in range(len(texts))]
    over = [i for i, f in enumerate(feats) if len(f["input_ids"]) > max_length]
    if over:
        cut = tokenizer(
            [texts[i] for i in over],
            [pairs[i] for i in over] if pairs is not None else None,
            truncation="longest_first" if pairs is not None else True,
            max_length=max_length,
        )
        for j, i in enumerate(over):
            feats[i] = {k: cut[k][j] for k in keys}
    flags = [False] * len(texts)
    for i in over:
        flags[i] = True
    return feats, flags


def _to_dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


def _check_word_split(tokenizer: Any) -> None:
    """Refuse byte-level BPE tokenizers that would glue pre-split words together.

    Without ``add_prefix_space=True`` RoBERTa/GPT-2 tokenize each word as if it followed no space,
    giving sub-tokens the model never saw in pre-training (older transformers raised here; 5.x does not).
    """
    words = ["Hello", "world"]
    split_ids = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if split_ids != text_ids and getattr(tokenizer, "add_prefix_space", None) is False:
        raise ValueError(
            f"{type(tokenizer).__name__} splits pre-tokenized words differently from running text "
            "(a byte-level BPE tokenizer without add_prefix_space). For token classification load it with "
            "AutoTokenizer.from_pretrained(name, add_prefix_space=True)."
        )


class SequenceClassificationTask(Task):
    """Single text or text-pair classification; head on the first token."""

    kind = "sequence-classification"

    @abstractmethod
    def format(self, example: Example) -> tuple[str, str | None]:
        """The model input of one example: ``(text, text_pair)``; ``text_pair`` None for one text."""

    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        max_length = _max_length(tokenizer, max_length)
        formatted = [self.format(ex) for ex in examples]
        texts = [a for a, _ in formatted]
        has_pair = [b is not None for _, b in formatted]
        if any(has_pair) and not all(has_pair):
            bad = examples[has_pair.index(False)]
            raise DataError("some examples have a second text and others not", path=bad.get("source"))
        pairs = [b for _, b in formatted] if any(has_pair) else None
        feats, flags = tokenize_texts(tokenizer, texts, pairs, max_length)
        for f, ex in zip(feats, examples):
            f["labels"] = _label_of(ex)
        return EncodedSplit(
            dataset=_to_dataset(feats),
            num_examples=len(feats),
            num_truncated=sum(flags),
            has_labels=any(ex.get("label") is not None for ex in examples),
        )

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = logits_of(eval_pred.predictions)
        labels = np.asarray(eval_pred.label_ids)
        preds = logits.argmax(-1)
        out = {"accuracy": accuracy(preds, labels)}
        if "macro_f1" in self.metric_names:
            out["macro_f1"] = macro_f1(preds, labels)
        return out


class MultipleChoiceTask(Task):
    """Pick one of ``num_choices`` (text, text_pair) candidates; a linear scorer per choice."""

    kind = "multiple-choice"
    num_choices: int = 2

    @abstractmethod
    def format(self, example: Example) -> list[tuple[str, str | None]]:
        """One ``(text, text_pair)`` per choice, in choice order."""

    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        max_length = _max_length(tokenizer, max_length)
        per_ex = [self.format(ex) for ex in examples]
        flat = [p for choices in per_ex for p in choices]
        feats, flags = tokenize_texts(
            tokenizer, [a for a, _ in flat], [b if b is not None else "" for _, b in flat], max_length
        )
        rows, truncated, pos = [], 0, 0
        for ex, choices in zip(examples, per_ex):
            chunk = feats[pos : pos + len(choices)]
            truncated += any(flags[pos : pos + len(choices)])
            pos += len(choices)
            row = {k: [c[k] for c in chunk] for k in chunk[0]}
            row["labels"] = _label_of(ex)
            rows.append(row)
        return EncodedSplit(
            dataset=_to_dataset(rows),
            num_examples=len(rows),
            num_truncated=truncated,
            has_labels=any(ex.get("label") is not None for ex in examples),
        )

    def collator(self, tokenizer: Any) -> Any:
        return MultipleChoiceCollator(tokenizer)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = logits_of(eval_pred.predictions)
        return {"accuracy": accuracy(logits.argmax(-1), np.asarray(eval_pred.label_ids))}


class TokenClassificationTask(Task):
    """Tag every word; the label sits on each word's first sub-token, other sub-tokens get -100.

    Examples hold ``tokens`` (words) and ``tags`` (tag strings). Tokenization uses
    ``is_split_into_words=True`` and needs a *fast* tokenizer (for ``word_ids``). Byte-level BPE
    tokenizers (RoBERTa, GPT-2, DeBERTa-v3 is SentencePiece and fine) must be loaded with
    ``add_prefix_space=True`` for pre-split words, e.g.
    ``AutoTokenizer.from_pretrained("roberta-large", add_prefix_space=True)``.
    """

    kind = "token-classification"
    metric_names = ("f1", "precision", "recall")
    main_metric = "f1"
    test_split = "test"
    # P-tuning v2 tokenizes NER with truncation=True and no max_length, i.e. at the model's limit: gold entities
    # past 128 sub-tokens still count. Truncating at 128 would drop a few of them from scoring.
    default_max_length = None

    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"token classification needs a fast tokenizer (for word_ids()); got {type(tokenizer).__name__}. "
                "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        max_length = _max_length(tokenizer, max_length)
        label2id = self.label2id
        words = [list(ex["tokens"]) for ex in examples]
        _check_word_split(tokenizer)
        full = tokenizer(words, is_split_into_words=True, truncation=False, verbose=False)
        keys = list(full.keys())
        over = [i for i in range(len(words)) if len(full["input_ids"][i]) > max_length]
        cut = (
            tokenizer([words[i] for i in over], is_split_into_words=True, truncation=True, max_length=max_length)
            if over
            else None
        )
        where = {i: j for j, i in enumerate(over)}
        rows = []
        for i, ex in enumerate(examples):
            enc, j = (cut, where[i]) if i in where else (full, i)
            row = {k: enc[k][j] for k in keys}
            tag_ids = [label2id[t] for t in ex["tags"]] if ex.get("tags") is not None else None
            labels, prev = [], None
            for wid in enc.word_ids(j):
                if wid is None or wid == prev or tag_ids is None:
                    labels.append(IGNORE_INDEX)
                else:
                    labels.append(tag_ids[wid])
                prev = wid
            row["labels"] = labels
            rows.append(row)
        return EncodedSplit(
            dataset=_to_dataset(rows),
            num_examples=len(rows),
            num_truncated=len(over),
            has_labels=any(ex.get("tags") is not None for ex in examples),
        )

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = logits_of(eval_pred.predictions)
        preds = logits.argmax(-1) if logits.ndim == 3 else logits
        true_seqs, pred_seqs = tag_sequences(preds, np.asarray(eval_pred.label_ids), self.labels)
        return seqeval_scores(true_seqs, pred_seqs)
