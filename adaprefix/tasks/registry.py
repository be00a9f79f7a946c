"""Task names -> task classes, and a summary of which tasks have data (for ``adaprefix tasks``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Task
from .errors import DataError, UnknownTaskError
from .ner import CoNLL03, CoNLL04, OntoNotes
from .superglue import CB, COPA, RTE, WSC, BoolQ, WiC
from .text2text import TEXT2TEXT_TASKS

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (BoolQ, CB, COPA, RTE, WiC, WSC, CoNLL03, CoNLL04, OntoNotes, *TEXT2TEXT_TASKS)
}
ALIASES: dict[str, str] = {"conll2003": "conll03", "conll-2003": "conll03", "ontonotes5": "ontonotes"}


def get_task(name: str, **kwargs: Any) -> Task:
    """A new task object for ``name`` (case-insensitive; e.g. "rte", "conll2003").

    ``kwargs`` go to the task's constructor (e.g. ``labels=[...]``). Unknown names raise
    :class:`UnknownTaskError` listing the known ones.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TASKS:
        known = ", ".join(sorted(TASKS))
        aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(ALIASES.items()))
        raise UnknownTaskError(
            f"unknown task {name!r}. Known tasks: {known} (aliases: {aliases}). "
            "For your own data use custom_task (or CustomSequenceTask, CustomTokenTask, CustomGenerationTask)."
        )
    return TASKS[key](**kwargs)


@dataclass
class TaskInfo:
    """One row of :func:`describe_tasks`."""

    name: str
    kind: str
    num_labels: int | None  # None where labels come from a train split that is not there
    where: str  # the task's folder (or expected file) under the data dir
    found: bool  # whether the evaluation split's file is present
    splits: dict[str, bool] = field(default_factory=dict)  # split -> file present


def describe_tasks(data_dir: str | Path | None = None) -> list[TaskInfo]:
    """For each registered task: name, kind, number of labels, where its data is looked for, and
    whether it was found (train / dev / test each, and overall = the evaluation split)."""
    rows = []
    for name in TASKS:
        task = get_task(name)
        splits = {s: task.has_split(s, data_dir) for s in ("train", "dev", "test")}
        loc = task.split_location(task.eval_split, data_dir)
        where = str(Path(loc).parent) if loc else "no data dir (pass --data-dir or set ADAPREFIX_DATA_DIR)"
        try:
            num_labels: int | None = len(task.labels_for(data_dir))
        except DataError:
            num_labels = None
        rows.append(TaskInfo(name, task.kind, num_labels, where, splits[task.eval_split], splits))
    return rows
