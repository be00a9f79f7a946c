"""SuperGLUE tasks (BoolQ, CB, RTE, WiC, WSC, COPA) in the P-tuning v2 input formats.

Files: ``<data dir>/superglue/<Task>/{train,val,test}.jsonl`` (or ``<data dir>/<Task>/...``), the
official SuperGLUE jsonl. Test splits are unlabelled: they load with ``label`` None (encoded as -100),
so every SuperGLUE task evaluates on ``dev`` (the official val file) and has ``test_split`` None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Example, Task
from .data_dir import find_data_file, locate_data_file
from .errors import DataError
from .hub import SUPER_GLUE, hub_fallback
from .kinds import MultipleChoiceTask, SequenceClassificationTask
from .readers import get_field, get_str, read_jsonl

_FILES = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}


class SuperGlueTask(Task):
    """Loading and label handling shared by the SuperGLUE tasks."""

    folder: str = ""  # folder name of the official release, e.g. "CB"
    hub_config: str = ""
    text_fields: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    test_split = None

    def __init__(self, labels: list[str] | None = None) -> None:
        super().__init__(labels if labels is not None else list(self.label_names))

    def _relpaths(self, split: str) -> list[str]:
        return [f"superglue/{self.folder}/{_FILES[split]}", f"{self.folder}/{_FILES[split]}"]

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        return locate_data_file(data_dir, self._relpaths(split))

    def _load(self, split: str, data_dir: str | Path | None) -> list[Example]:
        try:
            path = find_data_file(
                data_dir,
                self._relpaths(split),
                what=f"SuperGLUE {self.folder} {split} split ({_FILES[split]})",
                extra_hint="BoolQ's train split (9,427 records) is not in the shared data here: "
                "add the official BoolQ train.jsonl from the SuperGLUE release."
                if self.folder == "BoolQ" and split == "train"
                else "",
            )
        except DataError as missing:
            return self._load_from_hub(split, missing)
        return [self._example(rec, split, path, line) for line, rec in read_jsonl(path)]

    def _load_from_hub(self, split: str, missing: DataError) -> list[Example]:
        records, _, where = hub_fallback(missing, SUPER_GLUE, self.hub_config, split)
        return [self._example(hub_record_to_jsonl(rec), split, where, i + 1) for i, rec in enumerate(records)]

    def example_from_record(self, rec: dict[str, Any], where: Any, line: int | None) -> Example:
        """One input record in this task's official format (label optional), e.g. for prediction."""
        return self._example(rec, "test", where, line)

    def _example(self, rec: dict[str, Any], split: str, path: Any, line: int) -> Example:
        for field in self.text_fields:
            get_str(rec, field, path=path, line=line)
        raw = get_field(rec, "label", path=path, line=line, required=split != "test")
        ex = dict(rec)
        ex["label"] = None if raw is None else self._label_id(raw, path, line)
        ex["source"] = f"{path}:{line}" if line is not None else str(path)
        return ex

    def _label_id(self, raw: Any, path: Any, line: int) -> int:
        labels = self.labels
        boolean = labels == ["False", "True"]
        if isinstance(raw, bool):
            if boolean:
                return int(raw)
        elif isinstance(raw, int):
            if 0 <= raw < len(labels):
                return raw
        elif isinstance(raw, str):
            for i, name in enumerate(labels):
                if raw.strip().lower() == name.lower():
                    return i
        expected = f"one of {labels}" + (" (JSON true/false)" if boolean else "") + f" or an index 0..{len(labels) - 1}"
        raise DataError(
            "unknown label",
            path=path,
            line=line,
            field="label",
            expected=expected,
            got=raw,
            hint=f"Fix the label, or check that this file belongs to task {self.name!r}.",
        )


def hub_record_to_jsonl(rec: dict[str, Any]) -> dict[str, Any]:
    """Turn a hub ``super_glue`` record into the official jsonl shape.

    The hub flattens WSC's ``target`` object and marks unlabelled test records with label -1.
    """
    rec = dict(rec)
    if rec.get("label") == -1:
        del rec["label"]
    if "target" not in rec and "span1_text" in rec:
        rec["target"] = {k: rec.pop(k) for k in ("span1_index", "span2_index", "span1_text", "span2_text") if k in rec}
    return rec


class BoolQ(SuperGlueTask, SequenceClassificationTask):
    """BoolQ: (question, passage) -> False / True."""

    name, folder, hub_config = "boolq", "BoolQ", "boolq"
    text_fields = ("question", "passage")
    label_names = ("False", "True")

    def format(self, example: Example) -> tuple[str, str]:
        return example["question"], example["passage"]


class CB(SuperGlueTask, SequenceClassificationTask):
    """CommitmentBank: (premise, hypothesis) -> entailment / contradiction / neutral; accuracy and macro-F1."""

    name, folder, hub_config = "cb", "CB", "cb"
    text_fields = ("premise", "hypothesis")
    label_names = ("entailment", "contradiction", "neutral")
    metric_names = ("accuracy", "macro_f1")

    def format(self, example: Example) -> tuple[str, str]:
        return example["premise"], example["hypothesis"]


class RTE(SuperGlueTask, SequenceClassificationTask):
    """RTE: (premise, hypothesis) -> entailment / not_entailment."""

    name, folder, hub_config = "rte", "RTE", "rte"
    text_fields = ("premise", "hypothesis")
    label_names = ("entailment", "not_entailment")

    def format(self, example: Example) -> tuple[str, str]:
        return example["premise"], example["hypothesis"]


class WiC(SuperGlueTask, SequenceClassificationTask):
    """WiC: ("{word}: {sentence1}", "{word}: {sentence2}") -> same sense False / True."""

    name, folder, hub_config = "wic", "WiC", "wic"
    text_fields = ("word", "sentence1", "sentence2")
    label_names = ("False", "True")

    def format(self, example: Example) -> tuple[str, str]:
        word = example["word"]
        return f"{word}: {example['sentence1']}", f"{word}: {example['sentence2']}"


class WSC(SuperGlueTask, SequenceClassificationTask):
    """WSC: ("{pronoun}: {text}", "{candidate noun}") -> refers False / True.

    The pronoun is ``target.span2_text``, the candidate ``target.span1_text``.
    """

    name, folder, hub_config = "wsc", "WSC", "wsc.fixed"
    text_fields = ("text", "target.span1_text", "target.span2_text")
    label_names = ("False", "True")

    def format(self, example: Example) -> tuple[str, str]:
        target = example["target"]
        return f"{target['span2_text']}: {example['text']}", target["span1_text"]


class COPA(SuperGlueTask, MultipleChoiceTask):
    """COPA: two choices, each the pair (premise + " because" | " so", choice); label 0 / 1.

    " because" when ``question`` is "cause", " so" when it is "effect".
    """

    name, folder, hub_config = "copa", "COPA", "copa"
    text_fields = ("premise", "choice1", "choice2", "question")
    label_names = ("choice1", "choice2")
    num_choices = 2

    def _example(self, rec: dict[str, Any], split: str, path: Any, line: int) -> Example:
        ex = super()._example(rec, split, path, line)
        if ex["question"] not in ("cause", "effect"):
            raise DataError(path=path, line=line, field="question", expected="'cause' or 'effect'", got=ex["question"])
        return ex

    def format(self, example: Example) -> list[tuple[str, str]]:
        joiner = " because" if example["question"] == "cause" else " so"
        first = example["premise"] + joiner
        return [(first, example["choice1"]), (first, example["choice2"])]
