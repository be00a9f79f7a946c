"""Bring-your-own data: text classification from jsonl/json/csv/tsv files and token classification
from CoNLL column files (whatever their extension: ``.txt``, ``.conll``, ``.tsv``); prompt -> completion generation is
in :mod:`.custom_generation`. Paths are given per split; the data dir is not used. :func:`custom_task` picks the task
that fits the train file (see ``formats.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .base import Example
from .conll import ConllFormat
from .custom_files import given_path, read_records, split_paths
from .custom_generation import CustomGenerationTask, is_generation_data
from .errors import DataError, Verbatim
from .formats import DATA_KINDS, FORMAT_FLAG, check_format, detect_format
from .kinds import SequenceClassificationTask
from .ner import ConllTask
from .readers import QUOTING_FLAG, TSV_QUOTING, get_field


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
        train, dev, test: paths of the split files (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.tab``); csv/tsv
            need a header row. Any may be None if not used.
        text_column: field holding the text.
        text_pair_column: optional field holding the second text of a pair.
        label_column: field holding the label (strings, ints or booleans; booleans read as
            "false"/"true"). The test file may lack it.
        labels: the label set, in id order; default: the labels of the train file, sorted
            (numerically when all are integers).
        file_format: "jsonl", "csv" or "tsv" for every file; None or "auto": each file's own, from its
            extension and content (:func:`~.formats.detect_format`; a file that looks like tagging data is refused).
        tsv_quoting: how quote characters in a tsv file are read: "auto" (plain text when every line has the
            header's number of tabs, else CSV quoting), "none" (plain text, as in GLUE's TSVs) or "csv".
    Metrics: accuracy and macro-F1; the main metric is ``main_metric`` (default accuracy).
    """

    data_kind = "classification"

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
        tsv_quoting: str = "auto",
        main_metric: str = "accuracy",
    ) -> None:
        super().__init__([str(x) for x in labels] if labels is not None else None)
        self.name = name
        self.paths = split_paths(train, dev, test)
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.file_format = check_format(file_format or "auto")
        if self.file_format == "conll":
            raise DataError(field="format", expected="jsonl, csv or tsv for a classification task", got="conll",
                            hint="CoNLL column files are tagging data: use CustomTokenTask (or custom_task).")
        if tsv_quoting not in TSV_QUOTING:
            raise DataError(field="tsv_quoting", expected=f"one of {', '.join(TSV_QUOTING)}", got=tsv_quoting,
                            hint=f"Pass {QUOTING_FLAG} auto, none or csv.")
        self.tsv_quoting = tsv_quoting
        self.metric_names = ("accuracy", "macro_f1")
        self.main_metric = main_metric
        self.test_split = "test" if test is not None else None

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        path = self.paths.get(split)
        return str(path) if path is not None else None

    def _records(self, path: Path) -> list[tuple[int, dict[str, Any]]]:
        return read_records(path, self.file_format, self.tsv_quoting, "classification")

    def _collect_labels(self, data_dir: str | Path | None) -> list[str]:
        path = given_path(self.paths, "train", self.name)
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
        path = given_path(self.paths, split, self.name)
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
                    hint="The label set is the train file's labels (or labels=[...] in Python): fix this label, or "
                    "add train examples with it.",
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
    Tags must be "O" or BIO/IOBES (``B-X``, ``I-X``, ``E-X``, ``S-X``, or ``B``/``I`` without a type); metric:
    seqeval micro-F1. Byte-order marks, CRLF line ends and ``-DOCSTART-`` lines are handled by the reader.
    """

    file_format = "conll"
    data_kind = "tagging"

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
        self.paths = split_paths(train, dev, test)
        self.fmt = ConllFormat(
            token_column=token_column, tag_column=tag_column, num_columns=num_columns,
            delimiter=delimiter, boundary_prefixes=tuple(boundary_prefixes),
        )
        self.test_split = "test" if test is not None else None

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        path = self.paths.get(split)
        return str(path) if path is not None else None

    def _split_file(self, split: str, data_dir: str | Path | None) -> Path:
        return given_path(self.paths, split, self.name)


def custom_task(
    train: str | Path,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    *,
    file_format: str = "auto",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    token_column: int = 0,
    tag_column: int = -1,
    tsv_quoting: str = "auto",
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    kind: str = "auto",
) -> Any:
    """The bring-your-own task the train file calls for: tagging for CoNLL columns, generation for records with a
    prompt and a completion field (:func:`~.custom_generation.is_generation_data`), classification otherwise.

    The format is ``file_format``, or for ``auto`` the train file's (:func:`~.formats.detect_format`: its content,
    then its extension); ``kind`` (one of :data:`~.formats.DATA_KINDS`) overrides what the records look like. Dev
    and test files are read the same way. The task's ``file_format`` and ``data_kind`` are the ones chosen, never
    ``auto``, so a run can record them and rebuild the task without the train file.
    """
    fmt = check_format(file_format)
    if kind not in DATA_KINDS:
        raise DataError(field="kind", expected=f"one of {', '.join(DATA_KINDS)}", got=kind)
    if fmt == "auto":  # an explicit format needs no train file: a finished run predicts without it
        fmt = detect_format(given_path(split_paths(train, None, None), "train", "custom"), fmt,
                            tag_column=tag_column)
    if kind == "auto":
        train_path = Path(train) if train is not None else None
        if fmt == "conll":
            kind = "tagging"
        elif train_path is not None and train_path.is_file() and is_generation_data(
                train_path, fmt, tsv_quoting, prompt_column=prompt_column, completion_column=completion_column,
                label_column=label_column):
            kind = "generation"
        else:  # also a run recorded before kinds were: it predicts without its train file
            kind = "classification"
    if (kind == "tagging") != (fmt == "conll"):
        raise DataError(field="kind", expected="tagging with the conll format, classification or generation with "
                        "jsonl, csv or tsv", got=Verbatim(f"kind {kind!r} with format {fmt!r}"),
                        hint=f"Pass --kind auto, or the {FORMAT_FLAG} that the files have.")
    if kind == "tagging":
        return CustomTokenTask(train, dev, test, token_column=token_column, tag_column=tag_column)
    if kind == "generation":
        return CustomGenerationTask(train, dev, test, prompt_column=prompt_column,
                                    completion_column=completion_column, file_format=fmt, tsv_quoting=tsv_quoting)
    return CustomSequenceTask(train, dev, test, text_column=text_column, text_pair_column=text_pair_column,
                              label_column=label_column, file_format=fmt, tsv_quoting=tsv_quoting)
