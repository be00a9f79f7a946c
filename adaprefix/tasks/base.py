"""The Task interface: split names, the encoded form of a split, and what every task provides.

The kinds of task (sequence classification, multiple choice, token classification, prompt -> completion generation)
that implement it, with their encoding, collation and metrics, are in :mod:`adaprefix.tasks.kinds`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from .errors import DataError

KINDS = ("sequence-classification", "multiple-choice", "token-classification", "generation")

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


def _row_length(input_ids: list) -> int:
    """Tokens in a row; a multiple-choice row (one list per choice) counts its longest choice."""
    if input_ids and isinstance(input_ids[0], list):
        return max(len(choice) for choice in input_ids)
    return len(input_ids)


@dataclass
class EncodedSplit:
    """Model features of one split, ready for the task's collator.

    ``rows`` hold ``input_ids``, ``attention_mask`` (``token_type_ids`` where the tokenizer makes them) and
    ``labels`` (-100 where unlabelled), one per example. ``truncated[i]`` says whether example ``i`` was longer than
    ``max_length`` and was cut. ``dataset`` wraps the rows in a ``datasets.Dataset`` (for the Trainer) on first use;
    prediction and serving read ``rows`` and skip that cost.
    """

    rows: list[dict[str, Any]]
    truncated: list[bool]
    has_labels: bool

    @property
    def num_examples(self) -> int:
        return len(self.rows)

    @property
    def num_truncated(self) -> int:
        """Examples that were longer than ``max_length`` and were cut."""
        return sum(self.truncated)

    @cached_property
    def dataset(self) -> Any:
        """The rows as a ``datasets.Dataset``."""
        import datasets

        return datasets.Dataset.from_list(self.rows)

    @cached_property
    def dataset_by_length(self) -> Any:
        """The rows as a ``datasets.Dataset``, shortest first, for scoring a whole split.

        A batch pads to its longest row, so batches of similar lengths waste less: CoNLL-2003's dev set scores 1.7x
        faster. Every task's metrics are computed over the whole split, so the order cannot change them. The
        Trainer's ``loss`` can change: it averages per-batch means, and a tagging batch's mean is over its tokens.
        """
        import datasets

        order = sorted(range(len(self.rows)), key=lambda i: _row_length(self.rows[i]["input_ids"]))  # stable
        return datasets.Dataset.from_list([self.rows[i] for i in order])

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
        """Number of labels (the head's width)."""
        return len(self.labels)

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> id."""
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        """Id -> label name."""
        return dict(enumerate(self.labels))

    def auto_model_class(self) -> type:
        """The transformers Auto class whose head fits this task's kind."""
        import transformers

        return {
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "multiple-choice": transformers.AutoModelForMultipleChoice,
            "token-classification": transformers.AutoModelForTokenClassification,
            "generation": transformers.AutoModelForCausalLM,
        }[self.kind]

    def load_tokenizer(self, path: str | Path, model_type: str | None = None) -> Any:
        """The tokenizer of the backbone at ``path`` (whose ``model_type`` is given), loaded as this task needs it."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

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
