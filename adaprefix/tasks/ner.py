"""Named-entity recognition tasks read from CoNLL column files: CoNLL-2003, CoNLL04, OntoNotes 5.0.

Layout under the data dir (split names train / dev / test; ``valid.txt`` is accepted for dev):

- ``conll2003/{train,valid,test}.txt``: ``token POS chunk NER`` (space-separated), IOB2,
  ``-DOCSTART-`` lines, blank line between sentences.
- ``conll04/{train,dev,test}.txt``: ``idx token BIO-tag relations heads`` (tab-separated), a
  ``#doc N`` line before each sentence; only the token and tag columns are used.
- ``ontonotes/{train,dev,test}.txt``: OntoNotes 5.0 in the usual NER column form: whitespace-separated
  columns, the token first and its BIO (IOB2) tag last, e.g. ``token tag`` or ``token POS ... tag``;
  every line of a file has the same number of columns; blank lines separate sentences; ``-DOCSTART-``
  and ``#begin document`` / ``#end document`` lines are skipped. The bracketed CoNLL-2012
  ``*_gold_conll`` form (``(PERSON*``) is not read: convert it to BIO first. OntoNotes is
  LDC-licensed and not shipped; its label set comes from its train split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .base import Example
from .conll import ConllFormat, Sentence, read_conll
from .data_dir import find_data_file, locate_data_file
from .errors import DataError
from .hub import CONLL2003, hub_fallback
from .kinds import TokenClassificationTask

_DEFAULT_FILES = {"train": ("train.txt",), "dev": ("dev.txt", "valid.txt"), "test": ("test.txt",)}


def sorted_label_set(tags: Iterable[str]) -> list[str]:
    """"O" first, then the other tags in sorted (deterministic) order."""
    return ["O"] + sorted(set(tags) - {"O"})


def _bio(types: Iterable[str]) -> list[str]:
    return sorted_label_set(f"{p}-{t}" for t in types for p in "BI")


class ConllTask(TokenClassificationTask):
    """A token-classification task read from CoNLL column files.

    The label set is ``fixed_labels`` where the dataset defines one, else it is collected from the
    train split ("O" first, the rest sorted). A tag outside the label set is a DataError.
    """

    fmt: ConllFormat = ConllFormat()
    folder: str = ""
    files: dict[str, tuple[str, ...]] = _DEFAULT_FILES
    fixed_labels: tuple[str, ...] | None = None

    def __init__(self, labels: list[str] | None = None) -> None:
        if labels is None and self.fixed_labels is not None:
            labels = list(self.fixed_labels)
        super().__init__(labels)
        self._cache: dict[Path, tuple[tuple[float, int], list[Sentence]]] = {}

    def _relpaths(self, split: str) -> list[str]:
        return [f"{self.folder}/{name}" for name in self.files[split]]

    def split_location(self, split: str, data_dir: str | Path | None = None) -> str | None:
        return locate_data_file(data_dir, self._relpaths(split))

    def _split_file(self, split: str, data_dir: str | Path | None) -> Path:
        return find_data_file(data_dir, self._relpaths(split), what=f"{self.name} {split} split")

    def _sentences(self, split: str, data_dir: str | Path | None) -> tuple[str, list[Sentence]]:
        path = self._split_file(split, data_dir)
        stat = path.stat()
        key = (stat.st_mtime, stat.st_size)
        hit = self._cache.get(path)
        if hit is None or hit[0] != key:
            hit = (key, read_conll(path, self.fmt))
            self._cache[path] = hit
        return str(path), hit[1]

    def _collect_labels(self, data_dir: str | Path | None) -> list[str]:
        _, sents = self._sentences("train", data_dir)
        return sorted_label_set(t for s in sents for t in s.tags)

    def _load(self, split: str, data_dir: str | Path | None) -> list[Example]:
        self.labels_for(data_dir)
        path, sents = self._sentences(split, data_dir)
        return self._examples(path, sents)

    def _examples(self, path: str, sents: list[Sentence]) -> list[Example]:
        label2id = self.label2id
        out = []
        for s in sents:
            for tag, line in zip(s.tags, s.tag_lines):
                if tag not in label2id:
                    raise DataError(
                        "unknown label",
                        path=path,
                        line=line,
                        field="tag",
                        expected=f"one of {self.labels}",
                        got=tag,
                        hint="The label set comes from the train split (or the dataset's fixed set); "
                        "fix the tag or pass labels=[...] to the task.",
                    )
            out.append(
                {
                    "tokens": s.tokens,
                    "tags": s.tags,
                    "tag_ids": [label2id[t] for t in s.tags],
                    "label": None,  # token tasks carry per-word tags instead
                    "source": f"{path}:{s.line}",
                }
            )
        return out


class CoNLL03(ConllTask):
    """CoNLL-2003 English NER (PER, LOC, ORG, MISC; IOB2); entity-level micro-F1 on test."""

    name, folder = "conll03", "conll2003"
    files = {"train": ("train.txt",), "dev": ("valid.txt", "dev.txt"), "test": ("test.txt",)}
    fmt = ConllFormat(
        token_column=0, tag_column=3, num_columns=4, delimiter=None,
        boundary_prefixes=("-DOCSTART-",), columns_doc="token POS chunk NER",
    )
    fixed_labels = tuple(_bio(["PER", "LOC", "ORG", "MISC"]))
    hub_source = CONLL2003

    def _load(self, split: str, data_dir: str | Path | None) -> list[Example]:
        try:
            self._split_file(split, data_dir)
        except DataError as missing:
            return self._load_from_hub(split, missing)
        return super()._load(split, data_dir)

    def _load_from_hub(self, split: str, missing: DataError) -> list[Example]:
        records, features, where = hub_fallback(missing, self.hub_source, None, split)
        names = features["ner_tags"].feature.names
        sents = [
            Sentence(list(r["tokens"]), [names[t] for t in r["ner_tags"]], i + 1, [i + 1] * len(r["tokens"]))
            for i, r in enumerate(records)
            if r["tokens"]
        ]
        return self._examples(where, sents)


class CoNLL04(ConllTask):
    """CoNLL04 entities (Peop, Loc, Org, Other; BIO) from the multi-head-selection files."""

    name, folder = "conll04", "conll04"
    fmt = ConllFormat(
        token_column=1, tag_column=2, num_columns=5, delimiter="\t",
        boundary_prefixes=("#doc",), columns_doc="idx token BIO-tag relations heads, tab-separated",
    )
    fixed_labels = tuple(_bio(["Loc", "Org", "Other", "Peop"]))


class OntoNotes(ConllTask):
    """OntoNotes 5.0 NER from ``token ... tag`` column files; labels collected from train."""

    name, folder = "ontonotes", "ontonotes"
    fmt = ConllFormat(
        token_column=0, tag_column=-1, num_columns=None, delimiter=None,
        boundary_prefixes=("-DOCSTART-", "#begin document", "#end document"),
    )

    def _relpaths(self, split: str) -> list[str]:
        base = super()._relpaths(split)
        return base + [p[: -len(".txt")] + ".conll" for p in base]

