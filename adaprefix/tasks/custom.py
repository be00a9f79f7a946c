"""Bring-your-own data: text classification from jsonl/json/csv/tsv files and token classification
from CoNLL column files. Paths are given per split; the data dir is not used."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .base import Example, SequenceClassificationTask
from .conll import ConllFormat
from .errors import DataError
from .ner import ConllTask
from .readers import get_field, read_json_or_jsonl, read_table

_READERS = {".jsonl": "json", ".json": "json", ".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _given_path(paths: dict[str, Path | None], split: str, task_name: str) -> Path:
    path = paths.get(split)
    if path is None:
        raise DataError(
            f"task {task_name!r} has no {split} file",
            hint=f"Pass {split}=PATH when building the task (e.g. --{split}-file on the command line).",
        )
    if not path.is_file():
        raise DataError(f"file not found for the {split} split of task {task_name!r}", path=path,
                        hint="Check the path (relative paths are taken from the current directory).")
    return path


def _split_paths(train: Any, dev: Any, test: Any) -> dict[str, Path | None]:
    return {s: Path(p) if p is not None else None for s, p in (("train", train), ("dev", dev), ("test", test))}


def _label_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        return text or None
    return repr(value)


def _sort_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)  # "2" before "10" for numeric labels
    except ValueError:
        return sorted(labels)


class CustomSequenceTask(SequenceClassificationTask):
    """Sequence (or sequence-pair) classification from your own files.

    Args:
        train, dev, test: paths of the split files (``.jsonl``, ``.json``, ``.csv``, ``.tsv``); csv/tsv
            need a header row. Any may be None if not used.
        text_column: field holding the text.
        text_pair_column: optional field holding the second text of a pair.
        label_column: field holding the label (strings, ints or booleans; booleans read as
            "false"/"true"). The test file may lack it.
        labels: the label set, in id order; default: the labels of the train file, sorted
            (numerically when all are integers).
        file_format: "jsonl", "csv" or "tsv" to override the guess from the file extension.
    Metrics: accuracy and macro-F1; the main metric is ``main_metric`` (default accuracy).
    """

    def __init__(
        self,
        train: str | Path | None = None,
        dev: str | Path | None = None,
        test: str | Path | None = None,
        *,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        labels: Sequence[str] | None = None,
        name: str = "custom",
        file_format: str | None = None,
        main_metric: str = "accuracy",
    ) -> None:
        super().__init__([str(x) for x in labels] if labels is not None else None)
        self.name = name
        self.paths = _split_paths(train, dev, test)
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.file_format = file_format
        self.metric_names = ("accuracy", "macro_f1")
        self.main_metric = main_metric
        self.test_split = "test" if test is not None else None

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        path = self.paths.get(split)
        return str(path) if path is not None else None

    def _records(self, path: Path) -> list[tuple[int, dict[str, Any]]]:
        fmt = (self.file_format or "").lower().lstrip(".")
        kind = _READERS.get(f".{fmt}" if fmt else path.suffix.lower())
        if kind is None:
            raise DataError(
                "cannot tell the file format", path=path, expected="a .jsonl, .json, .csv or .tsv file",
                got=path.suffix or "no extension", hint="Rename the file or pass file_format='jsonl'|'csv'|'tsv'.",
            )
        return read_json_or_jsonl(path) if kind == "json" else read_table(path, kind)

    def _collect_labels(self, data_dir: str | Path | None) -> list[str]:
        path = _given_path(self.paths, "train", self.name)
        found = set()
        for line, rec in self._records(path):
            label = _label_text(get_field(rec, self.label_column, path=path, line=line))
            if label is None:
                raise DataError("empty label", path=path, line=line, field=self.label_column)
            found.add(label)
        if not found:
            raise DataError("the train file has no examples, so no label set", path=path)
        return _sort_labels(found)

    def _load(self, split: str, data_dir: str | Path | None) -> list[Example]:
        path = _given_path(self.paths, split, self.name)
        self.labels_for(data_dir)
        label2id = self.label2id
        out = []
        for line, rec in self._records(path):
            text = self._text(rec, self.text_column, path, line)
            pair = self._text(rec, self.text_pair_column, path, line) if self.text_pair_column else None
            raw = get_field(rec, self.label_column, path=path, line=line, required=split != "test")
            label = _label_text(raw)
            if label is None and split != "test":
                raise DataError("empty label", path=path, line=line, field=self.label_column,
                                hint="Every train/dev example needs a label.")
            if label is not None and label not in label2id:
                raise DataError(
                    "unknown label", path=path, line=line, field=self.label_column,
                    expected=f"one of {self.labels}", got=raw,
                    hint="Known labels come from the train file (or labels=[...]): fix the label or add it to labels.",
                )
            out.append({
                "text": text,
                "text_pair": pair,
                "label": label2id[label] if label is not None else None,
                "source": f"{path}:{line}",
            })
        return out

    @staticmethod
    def _text(rec: dict[str, Any], column: str, path: Path, line: int) -> str:
        value = get_field(rec, column, path=path, line=line)
        if not isinstance(value, str):
            raise DataError(path=path, line=line, field=column, expected="a string", got=value)
        return value

    def format(self, example: Example) -> tuple[str, str | None]:
        return example["text"], example.get("text_pair")


class CustomTokenTask(ConllTask):
    """Token classification (e.g. NER) from your own CoNLL column files.

    Args:
        train, dev, test: paths of the split files; any may be None if not used.
        token_column, tag_column: 0-based column indices (negative counts from the end).
        delimiter: None for any whitespace, or e.g. "\\t".
        num_columns: fixed number of columns; None means every line of a file must have as many as its
            first token line.
        labels: the tag set, in id order; default "O" then the train tags sorted.
        boundary_prefixes: lines starting with one of these end a sentence and are skipped.
    Tags must be "O" or BIO/IOBES (``B-X``, ``I-X``, ``E-X``, ``S-X``); metric: seqeval micro-F1.
    """

    def __init__(
        self,
        train: str | Path | None = None,
        dev: str | Path | None = None,
        test: str | Path | None = None,
        *,
        token_column: int = 0,
        tag_column: int = -1,
        delimiter: str | None = None,
        num_columns: int | None = None,
        labels: Sequence[str] | None = None,
        boundary_prefixes: tuple[str, ...] = ("-DOCSTART-",),
        name: str = "custom-ner",
    ) -> None:
        super().__init__(list(labels) if labels is not None else None)
        self.name = name
        self.paths = _split_paths(train, dev, test)
        self.fmt = ConllFormat(
            token_column=token_column, tag_column=tag_column, num_columns=num_columns,
            delimiter=delimiter, boundary_prefixes=tuple(boundary_prefixes),
        )
        self.test_split = "test" if test is not None else None

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        path = self.paths.get(split)
        return str(path) if path is not None else None

    def _split_file(self, split: str, data_dir: str | Path | None) -> Path:
        return _given_path(self.paths, split, self.name)
