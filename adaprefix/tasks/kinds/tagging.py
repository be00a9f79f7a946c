"""Token classification: a tag per word, on each word's first sub-token; seqeval entity-level scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..base import EncodedSplit, Example, Task
from ..errors import SlowTokenizerError, TokenizerError
from ..metrics import IGNORE_INDEX, logits_of, seqeval_scores, tag_sequences
from .encoding import resolve_length

#: Model types whose byte-level BPE tokenizers need ``add_prefix_space=True`` for pre-split words.
BYTE_LEVEL_BPE = ("roberta", "gpt2", "qwen2", "deberta")


def check_word_split(tokenizer: Any) -> None:
    """Refuse byte-level BPE tokenizers that would glue pre-split words together.

    Without ``add_prefix_space=True`` RoBERTa/GPT-2 tokenize each word as if it followed no space,
    giving sub-tokens the model never saw in pre-training (older transformers raised here; 5.x does not).
    """
    words = ["Hello", "world"]
    split_ids = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if split_ids != text_ids and getattr(tokenizer, "add_prefix_space", None) is False:
        raise TokenizerError(
            f"{type(tokenizer).__name__} splits pre-tokenized words differently from running text "
            "(a byte-level BPE tokenizer without add_prefix_space). For token classification load it with "
            "AutoTokenizer.from_pretrained(name, add_prefix_space=True)."
        )


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

    def load_tokenizer(self, path: str | Path, model_type: str | None = None) -> Any:
        """The backbone's tokenizer; byte-level BPE ones (:data:`BYTE_LEVEL_BPE`) with ``add_prefix_space=True``."""
        from transformers import AutoTokenizer

        kwargs = {"add_prefix_space": True} if model_type in BYTE_LEVEL_BPE else {}
        return AutoTokenizer.from_pretrained(path, **kwargs)

    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        if not getattr(tokenizer, "is_fast", False):
            raise SlowTokenizerError(
                f"token classification needs a fast tokenizer (for word_ids()); got {type(tokenizer).__name__}. "
                "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        max_length = resolve_length(tokenizer, max_length)
        label2id = self.label2id
        words = [list(ex["tokens"]) for ex in examples]
        check_word_split(tokenizer)
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
        return EncodedSplit(rows, [i in where for i in range(len(rows))],
                            has_labels=any(ex.get("tags") is not None for ex in examples))

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = logits_of(eval_pred.predictions)
        preds = logits.argmax(-1) if logits.ndim == 3 else logits
        true_seqs, pred_seqs = tag_sequences(preds, np.asarray(eval_pred.label_ids), self.labels)
        return seqeval_scores(true_seqs, pred_seqs)
