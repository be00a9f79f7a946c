"""Bring-your-own generation data: prompt -> completion records in jsonl / json / csv / tsv, for decoders.

How ``--task custom`` tells generation data from classification data (:func:`is_generation_data`): the train file's
first record holds both the prompt field and the completion field (``prompt`` and ``completion`` unless
``--prompt-column`` / ``--completion-column`` say otherwise). A first record with one of the two and no label field is
refused, naming the missing one (a misspelt column should not silently become a classification run); ``--kind
generation`` says it outright. The run records the kind it chose, so predicting needs no train file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Example
from .custom_files import given_path, read_records, split_paths
from .errors import DataError
from .kinds.generation import GenerationTask
from .readers import get_field

COLUMN_FLAGS = "--prompt-column / --completion-column"


class CustomGenerationTask(GenerationTask):
    """Prompt -> completion from your own files (see :mod:`adaprefix.tasks.kinds.generation` for the encoding).

    Args:
        train, dev, test: paths of the split files (``.jsonl``, ``.json``, ``.csv``, ``.tsv``); csv/tsv need a header
            row. The test file may lack completions (then it is only generated from).
        prompt_column, completion_column: the fields holding the prompt and the reference completion. Both are
            strings; the prompt may not be empty (a decoder needs something to continue), nor a train/dev completion
            (there would be nothing to learn or to match but EOS).
        file_format: "jsonl", "csv" or "tsv" for every file; None or "auto": each file's own.
        tsv_quoting: as for :class:`~adaprefix.tasks.custom.CustomSequenceTask`.
    Metrics: exact match (main), completion loss and perplexity.
    """

    data_kind = "generation"
    text_fields = ("prompt",)  # what `adaprefix predict` takes as text input

    def __init__(
        self,
        train: str | Path | None = None,
        dev: str | Path | None = None,
        test: str | Path | None = None,
        *,
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        name: str = "custom",
        file_format: str | None = None,
        tsv_quoting: str = "auto",
    ) -> None:
        super().__init__(labels=[])  # no label set: the completions are free text
        self.name = name
        self.paths = split_paths(train, dev, test)
        self.prompt_column, self.completion_column = prompt_column, completion_column
        self.file_format = file_format or "auto"
        if self.file_format == "conll":
            raise DataError(field="format", expected="jsonl, csv or tsv for a generation task", got="conll",
                            hint="CoNLL column files are tagging data.")
        self.tsv_quoting = tsv_quoting
        self.test_split = "test" if test is not None else None

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        path = self.paths.get(split)
        return str(path) if path is not None else None

    def _load(self, split: str, data_dir: str | Path | None) -> list[Example]:
        path = given_path(self.paths, split, self.name)
        records = read_records(path, self.file_format, self.tsv_quoting, "generation")
        return [self._example(rec, path, line, required=split != "test") for line, rec in records]

    def example_from_record(self, rec: dict[str, Any], where: Any, line: int | None) -> Example:
        """One input record of this task (a prompt, completion optional), e.g. for prediction."""
        return self._example(rec, where, line, required=False)

    def _example(self, rec: dict[str, Any], path: Any, line: int | None, required: bool) -> Example:
        prompt = self._text(rec, self.prompt_column, path, line, required=True)
        completion = self._text(rec, self.completion_column, path, line, required=required)
        source = f"{path}:{line}" if line is not None else str(path)
        return {"prompt": prompt, "completion": completion, "source": source}

    @staticmethod
    def _text(rec: dict[str, Any], column: str, path: Path, line: int, required: bool) -> str | None:
        value = get_field(rec, column, path=path, line=line, required=required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise DataError(path=path, line=line, field=column, expected="a string", got=value,
                            hint="Prompts and completions are text; quote numbers in JSON (\"3\", not 3).")
        if not value.strip():
            raise DataError("empty text", path=path, line=line,
                            field=column, expected="a non-empty string", got=value,
                            hint="Every prompt needs text to continue, and every train/dev completion text to learn "
                                 "and match; drop the record or fill it in.")
        return value

    def format(self, example: Example) -> tuple[str, str | None]:
        return example["prompt"], example.get("completion")


def is_generation_data(path: Path, file_format: str, tsv_quoting: str, *, prompt_column: str,
                       completion_column: str, label_column: str) -> bool:
    """Whether a table file (jsonl / csv / tsv) holds prompt -> completion records: its first record has both the
    prompt and the completion field. One of the two without the other and without a label field is a DataError that
    names the missing field (a misspelt column name, most likely)."""
    records = read_records(path, file_format, tsv_quoting, "classification or generation")
    if not records:
        return False
    line, first = records[0]
    has_prompt, has_completion = prompt_column in first, completion_column in first
    if has_prompt and has_completion:
        return True
    if (has_prompt or has_completion) and label_column not in first:
        missing = completion_column if has_prompt else prompt_column
        raise DataError(
            "a generation record needs both a prompt and a completion field", path=path, line=line, field=missing,
            expected=f"fields {prompt_column!r} and {completion_column!r} (generation) or a {label_column!r} label "
                     "(classification)", got=sorted(first),
            hint=f"Name the columns with {COLUMN_FLAGS} (or --label-column for classification).",
        )
    return False
