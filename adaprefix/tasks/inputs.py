"""New inputs for prediction, in the task's own example format: from a text (and pair), a text file with one input
per line (a tab between text and pair), or jsonl records in the task's format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .base import Example, Task
from .errors import DataError, Verbatim
from .readers import numbered_lines, read_jsonl, read_text

#: Fields of a loaded example that are bookkeeping or gold labels, not part of the input.
NOT_INPUT = ("label", "source", "tags", "tag_ids")


def input_fields(task: Task) -> tuple[str, ...]:
    """The example fields that hold a task's input texts, in order (e.g. premise, hypothesis)."""
    if task.kind == "token-classification":
        return ("tokens",)
    if hasattr(task, "text_fields"):
        return tuple(task.text_fields)
    return ("text", "text_pair") if task.text_pair_column else ("text",)  # custom classification


def input_view(example: Example) -> dict[str, Any]:
    """The input part of an example (no label, tags or source, no empty fields), to show beside its prediction."""
    return {k: v for k, v in example.items() if k not in NOT_INPUT and v is not None}


def read_jsonl_inputs(task: Task, file: str | Path) -> list[Example]:
    """Records of a jsonl file in the task's own format, checked for the fields the task reads."""
    file = Path(file)
    return examples_from_records(task, read_jsonl(file), file)  # a byte-order mark and CRLF line ends are fine


def examples_from_records(task: Task, records: Sequence[tuple[int | None, dict[str, Any]]],
                          where: str | Path) -> list[Example]:
    """Input records (``(line, record)`` pairs, line None where there is none) in the task's own format as examples,
    checked for the fields the task reads; a bad record's error names ``where`` and its line."""
    if hasattr(task, "example_from_record"):  # the task's own format and checks (SuperGLUE, generation)
        return [task.example_from_record(record, where, line) for line, record in records]
    if task.kind == "token-classification":
        columns = {"tokens": "tokens"}
    else:
        columns = {"text": task.text_column}
        if task.text_pair_column:
            columns["text_pair"] = task.text_pair_column
    examples = []
    for line, record in records:
        if not isinstance(record, dict):
            raise DataError(path=where, line=line, expected="a JSON object", got=Verbatim(type(record).__name__))
        missing = [c for c in columns.values() if c not in record]
        if missing:
            raise DataError(f"missing field(s) {', '.join(missing)}; present: {', '.join(record) or 'none'}",
                            path=where, line=line)
        example = {key: record[column] for key, column in columns.items()}
        for key, column in columns.items():
            _check_input_field(key, column, example[key], where, line)
        examples.append(example)
    return examples


def _check_input_field(key: str, column: str, value: Any, where: str | Path, line: int | None) -> None:
    """A tagging record's words are a list of strings and a text is a string: anything else would be tagged
    letter by letter, or reach the tokenizer as a number."""
    if key == "tokens":
        if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
            hint = ("A text is split into words at spaces: give it as the input itself, not as its tokens."
                    if isinstance(value, str) else None)
            raise DataError(path=where, line=line, field=column, expected="a list of words (strings)",
                            got=value, hint=hint)
    elif not isinstance(value, str):
        raise DataError(path=where, line=line, field=column, expected="a string", got=value)


def parse_inputs(task: Task, text: str | None = None, text_pair: str | None = None,
                 file: str | Path | None = None) -> list[Example]:
    """Inputs for ``task`` from ``file`` (jsonl records, or one input per line with a tab before the pair), else
    from ``text`` (and ``text_pair``). Tagging inputs are whitespace-separated words; multiple-choice tasks and
    tasks of more than two texts take jsonl records only."""
    fields = input_fields(task)
    if file is not None:
        file = Path(file)
        if not file.is_file():
            raise DataError(f"{file}: input file not found")
        if file.suffix == ".jsonl":
            return read_jsonl_inputs(task, file)
        rows = [line.split("\t") for _, line in numbered_lines(read_text(file)) if line.strip()]
    elif text is not None:
        rows = [[text] + ([text_pair] if text_pair is not None else [])]
    else:
        raise DataError("give an input text (and pair), or --file")
    if task.kind == "token-classification":
        for number, row in enumerate(rows, 1):
            if len(row) > 1:  # a second text has no place in a tagging input: refused, not dropped
                raise DataError(f"input {number}: {len(row)} texts, but tagging task {task.name!r} takes one (its "
                                "words, split at spaces)")
        return [{"tokens": row[0].split()} for row in rows]
    if task.kind == "multiple-choice" or len(fields) > 2:
        raise DataError(f"task {task.name!r} takes fields {', '.join(fields)}: pass --file with jsonl records in "
                        "its official format")
    examples = []
    for number, row in enumerate(rows, 1):
        if len(row) > len(fields):
            raise DataError(f"input {number}: {len(row)} texts, but task {task.name!r} takes {len(fields)} "
                            f"({', '.join(fields)})")
        if len(row) < len(fields):
            raise DataError(f"input {number}: task {task.name!r} takes a pair ({', '.join(fields)}); give both")
        examples.append(dict(zip(fields, row)))
    return examples
