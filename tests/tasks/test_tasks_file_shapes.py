"""Bring-your-own files as people have them: GLUE-style TSVs with quote characters, byte-order marks, CRLF line
ends, missing or extra final newlines, -DOCSTART- lines, tagging data in .tsv and .txt, integer and string labels.

Each shape is either read correctly (the parsed values are checked) or refused with a DataError that names the
file, the line and the setting that gets the user out.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from adaprefix.tasks import (CustomSequenceTask, CustomTokenTask, DataError, custom_task, detect_format,
                             sample_examples)
from adaprefix.tasks.metrics import seqeval_scores
from adaprefix.tasks.readers import read_table

BOM = "\ufeff"

# Five tab-separated fields on every line; the quote characters are text, as in GLUE's MRPC files.
MRPC = (
    "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    '1\t2529661\t2529575\t" We are declaring war on the terrorists .\t'
    '" We have declared war on terror , " Rosa said .\n'
    "0\t3018\t3019\tHe said \"no\" twice .\tShe said 'yes' .\n"
    '1\t10\t11\t"Quoted from start to end"\tplain\n'
)


def _mrpc_task(path, **kw):
    return CustomSequenceTask(train=path, dev=path, text_column="#1 String", text_pair_column="#2 String",
                              label_column="Quality", **kw)


# -- TSV quoting --------------------------------------------------------------------------------------------------
def test_glue_style_tsv_with_quotes_and_bom_reads_five_cells_per_line(tmp_path, write_text):
    path = write_text(tmp_path / "msr_paraphrase_train.tsv", BOM + MRPC)
    task = _mrpc_task(path)
    assert task.labels == ["0", "1"]  # the header read 'Quality', not '\ufeffQuality'
    examples = task.load("train")
    assert [(ex["text"], ex["text_pair"], ex["label"]) for ex in examples] == [
        ('" We are declaring war on the terrorists .', '" We have declared war on terror , " Rosa said .', 1),
        ('He said "no" twice .', "She said 'yes' .", 0),
        ('"Quoted from start to end"', "plain", 1),
    ]
    assert [ex["source"].rsplit(":", 1)[1] for ex in examples] == ["2", "3", "4"]
    assert isinstance(custom_task(path, label_column="Quality", text_column="#1 String"), CustomSequenceTask)


def test_csv_quoting_on_a_glue_tsv_fails_naming_the_line_and_the_setting(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", MRPC)
    with pytest.raises(DataError) as err:
        _mrpc_task(path, tsv_quoting="csv").load("train")
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: wrong number of cells (tab-separated).")
    assert "Expected 5 cells (header: ['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String']), got 4 cells" in msg
    assert "pass --tsv-quoting none" in msg


def test_quoted_tsv_cells_holding_tabs_and_line_breaks_read_with_csv_quoting(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", 'text\tlabel\n"a\ttab"\tpos\n"two\nlines"\tneg\nplain\tpos\n')
    for quoting in ("auto", "csv"):  # auto: not every line has the header's one tab, so CSV quoting applies
        rows = read_table(path, "\t", quoting)
        assert rows == [(2, {"text": "a\ttab", "label": "pos"}), (3, {"text": "two\nlines", "label": "neg"}),
                        (5, {"text": "plain", "label": "pos"})]
    with pytest.raises(DataError) as err:
        read_table(path, "\t", "none")
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: wrong number of cells (tab-separated).")
    assert "got 3 cells ['\"a', 'tab\"', 'pos']" in msg and "pass --tsv-quoting csv" in msg


def test_auto_quoting_reports_the_odd_line_when_neither_reading_works(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", 'text\tlabel\n"open quote\tpos\nfine\tneg\none\ttoo\tmany\n')
    with pytest.raises(DataError) as err:
        read_table(path, "\t", "auto")
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: wrong number of cells (tab-separated).")
    assert "got 3 cells ['one', 'too', 'many']" in msg
    assert "--tsv-quoting none" in msg and "--tsv-quoting csv" in msg


def test_unknown_quoting_is_refused(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", "text\tlabel\na\tx\n")
    with pytest.raises(DataError, match="field 'tsv_quoting': Expected one of auto, none, csv, got 'quoted'"):
        CustomSequenceTask(train=path, tsv_quoting="quoted")


# -- byte-order marks, line ends, final newlines --------------------------------------------------------------
@pytest.mark.parametrize("name,text", [
    ("train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'),
    ("train.csv", "text,label\ngood,pos\nbad,neg\n"),
    ("train.tsv", "text\tlabel\ngood\tpos\nbad\tneg\n"),
])
@pytest.mark.parametrize("shape", ["plain", "bom", "crlf", "bom+crlf", "no final newline", "trailing blank lines"])
def test_classification_files_of_every_shape_read_the_same(tmp_path, write_text, name, text, shape):
    if "crlf" in shape:
        text = text.replace("\n", "\r\n")
    if "bom" in shape:
        text = BOM + text
    if shape == "no final newline":
        text = text.rstrip("\n")
    if shape == "trailing blank lines":
        text += "\n  \n\n"
    path = write_text(tmp_path / name, text)
    task = CustomSequenceTask(train=path)
    assert task.labels == ["neg", "pos"]
    examples = task.load("train")
    assert [(ex["text"], ex["label"]) for ex in examples] == [("good", 1), ("bad", 0)]
    first = 1 if name.endswith(".jsonl") else 2
    assert [ex["source"] for ex in examples] == [f"{path}:{first}", f"{path}:{first + 1}"]


CONLL = ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
         "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")


@pytest.mark.parametrize("shape", ["plain", "bom", "crlf", "no final newline", "trailing blank lines"])
def test_conll_files_of_every_shape_read_the_same(tmp_path, write_text, shape):
    text = {"plain": CONLL, "bom": BOM + CONLL, "crlf": CONLL.replace("\n", "\r\n"),
            "no final newline": CONLL.rstrip("\n"), "trailing blank lines": CONLL + "\n\n"}[shape]
    path = write_text(tmp_path / "train.txt", text)
    task = custom_task(path, path)
    assert isinstance(task, CustomTokenTask) and task.file_format == "conll"
    assert task.labels == ["O", "B-ORG", "B-PER", "I-PER"]
    examples = task.load("dev")
    assert [(ex["tokens"], ex["tags"]) for ex in examples] == [
        (["EU", "rejects"], ["B-ORG", "O"]), (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert [ex["source"] for ex in examples] == [f"{path}:3", f"{path}:6"]


def test_bom_before_a_first_token_line_is_not_part_of_the_token(tmp_path, write_text):
    path = write_text(tmp_path / "train.conll", BOM + "EU B-ORG\nrejects O\n")
    assert CustomTokenTask(train=path).load("train")[0]["tokens"] == ["EU", "rejects"]


def test_non_utf8_files_are_refused_naming_the_line(tmp_path):
    latin1 = tmp_path / "train.tsv"
    latin1.write_bytes("text\tlabel\ncaf\u00e9\tpos\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        CustomSequenceTask(train=latin1).load("train")
    assert str(err.value).startswith(f"{latin1}:2: not UTF-8 text (byte b'\\xe9' at byte offset 14).")
    assert "Re-save the file as UTF-8" in str(err.value)
    utf16 = tmp_path / "train.jsonl"
    utf16.write_bytes('{"text": "a", "label": "x"}\n'.encode("utf-16"))
    with pytest.raises(DataError, match="the file is UTF-16 text.*Re-save it as UTF-8"):
        CustomSequenceTask(train=utf16).load("train")


# -- tagging data whatever the extension ----------------------------------------------------------------------
BIONLP_TSV = "-DOCSTART-\tO\n\nIL-2\tB-protein\ngene\tI-protein\nexpression\tO\n\nNF-kappa\tB-protein\nB\tI-protein\n"


@pytest.mark.parametrize("name", ["train.tsv", "devel.tsv", "train.txt", "train.iob", "train"])
def test_tagging_data_in_tsv_and_txt_is_read_as_tagging(tmp_path, write_text, name):
    path = write_text(tmp_path / name, BIONLP_TSV)
    assert detect_format(path) == "conll"
    task = custom_task(path, path)
    assert isinstance(task, CustomTokenTask) and task.kind == "token-classification"
    assert task.labels == ["O", "B-protein", "I-protein"]
    examples = task.load("train")
    assert [(ex["tokens"], ex["tags"]) for ex in examples] == [
        (["IL-2", "gene", "expression"], ["B-protein", "I-protein", "O"]),
        (["NF-kappa", "B"], ["B-protein", "I-protein"]),
    ]


def test_bio_tags_without_a_type_are_tagging_data(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", "deep\tB\nlearning\tI\nworks\tO\n\nnets\tB\n")
    task = custom_task(path, path)
    assert task.labels == ["O", "B", "I"]
    examples = task.load("dev")
    assert examples[0]["tags"] == ["B", "I", "O"] and examples[1]["tokens"] == ["nets"]
    assert seqeval_scores([["B", "I", "O"]], [["B", "I", "O"]])["f1"] == 1.0


def test_explicit_format_overrides_the_guess(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", "word\ttag\nIL-2\tB-protein\ngene\tO\n")
    with pytest.raises(DataError) as err:  # a header above tagged lines: could be either
        custom_task(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: cannot tell whether this is tagging or classification data")
    assert "a header row?" in msg and "got first line 'word\\ttag'" in msg
    assert "--format conll (tagging) or --format tsv (classification)" in msg
    task = custom_task(path, text_column="word", label_column="tag", file_format="tsv")
    assert isinstance(task, CustomSequenceTask) and task.file_format == "tsv"
    assert task.labels == ["B-protein", "O"]
    jsonl_in_txt = write_text(tmp_path / "records.txt", '{"text": "a", "label": 1}\n')
    assert detect_format(jsonl_in_txt) == "jsonl" and detect_format(jsonl_in_txt, "TSV") == "tsv"
    with pytest.raises(DataError, match="field 'format': Expected one of auto, jsonl, csv, tsv, conll, got 'xml'"):
        detect_format(jsonl_in_txt, "xml")


def test_tagged_lines_without_sentence_breaks_in_a_tsv_are_ambiguous(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", "IL-2\tB-protein\ngene\tO\n")
    with pytest.raises(DataError) as err:
        custom_task(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: cannot tell") and "no blank line separates sentences" in msg
    assert "--format conll" in msg and "--format tsv" in msg
    assert detect_format(tmp_path / "train.tsv", "conll") == "conll"
    assert detect_format(write_text(tmp_path / "one_sentence.txt", "IL-2 B-protein\ngene O\n")) == "conll"


@pytest.mark.parametrize("name,text,expected", [
    ("train.tsv", "sentence\tlabel\nit was great\t1\n\nawful\t0\n", "tsv"),  # blank line, but a table
    ("train.csv", "text,label\nI,O\n", "csv"),
    ("train.tab", "text\tlabel\na\tb\n", "tsv"),
    ("train.json", "[\n  {\"text\": \"a\", \"label\": 1}\n]\n", "jsonl"),
    ("train.conll", "not tags here\n", "conll"),  # the reader names the line
    ("train.txt", "EU B-ORG\nrejects O\n\nbad (PERSON*\n", "conll"),  # mostly tagged: the reader names line 4
    ("conll04.txt", "0\tJohn\tB-Peop\t['N']\n\n0\tIBM\tB-Org\t['N']\n", "conll"),  # tag column 2 (see below)
    ("empty.tsv", "", "tsv"),
])
def test_detect_format(tmp_path, write_text, name, text, expected):
    path = write_text(tmp_path / name, text)
    tag_column = 2 if name.startswith("conll04") else -1
    assert detect_format(path, tag_column=tag_column) == expected


def test_a_classification_task_refuses_tagging_data(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", BIONLP_TSV)
    with pytest.raises(DataError) as err:
        CustomSequenceTask(train=path).load("train")
    assert str(err.value).startswith(f"{path}: this file looks like tagging data")
    assert "--format tsv" in str(err.value)


def test_docstart_lines_in_a_tagging_tsv_split_documents(tmp_path, write_text):
    path = write_text(tmp_path / "train.tsv", "-DOCSTART-\tO\nEU\tB-ORG\n-DOCSTART-\tO\nBonn\tB-LOC\n")
    examples = custom_task(path).load("train")
    assert [ex["tokens"] for ex in examples] == [["EU"], ["Bonn"]]


# -- labels ---------------------------------------------------------------------------------------------------
def test_integer_and_string_labels(tmp_path, write_jsonl, write_text):
    ints = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in
                                                  [("a", 10), ("b", 2), ("c", 0), ("d", "2")]])
    task = CustomSequenceTask(train=ints)
    assert task.labels == ["0", "2", "10"]  # numeric order; 2 and "2" are one label
    assert [ex["label"] for ex in task.load("train")] == [2, 1, 0, 1]
    words = write_text(tmp_path / "train.tsv", "text\tlabel\na\tpositive\nb\tNegative\nc\tneutral\n")
    task = CustomSequenceTask(train=words)
    assert task.labels == ["Negative", "neutral", "positive"]
    assert [ex["label"] for ex in task.load("train")] == [2, 0, 1]


def test_a_dev_label_unseen_in_train_is_refused(tmp_path, write_text):
    train = write_text(tmp_path / "train.tsv", "text\tlabel\na\t0\nb\t1\n")
    dev = write_text(tmp_path / "dev.tsv", "text\tlabel\nc\t1\nd\t2\n")
    with pytest.raises(DataError) as err:
        custom_task(train, dev).load("dev")
    assert str(err.value) == (
        f"{dev}:3: field 'label': unknown label. Expected one of ['0', '1'], got '2'. The label set is the train "
        "file's labels (or labels=[...] in Python): fix this label, or add train examples with it.")


def test_a_dev_tag_unseen_in_train_is_refused(tmp_path, write_text):
    train = write_text(tmp_path / "train.tsv", "EU\tB-ORG\nsays\tO\n\nhi\tO\n")
    dev = write_text(tmp_path / "dev.tsv", "Bonn\tB-LOC\n\nok\tO\n")
    with pytest.raises(DataError) as err:
        custom_task(train, dev).load("dev")
    msg = str(err.value)
    assert msg.startswith(f"{dev}:1: field 'tag': unknown label. Expected one of ['O', 'B-ORG'], got 'B-LOC'.")


# -- seeded subsets -------------------------------------------------------------------------------------------
def test_sample_examples_is_seeded_nested_in_file_order_and_ignores_global_rngs():
    examples = [{"label": 0}] * 50 + [{"label": 1}] * 50  # a file sorted by label
    numbered = [dict(ex, i=i) for i, ex in enumerate(examples)]
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    small = sample_examples(numbered, 10, seed=7)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    torch_state = torch.get_rng_state()
    assert sample_examples(numbered, 10, seed=7) == small  # same seed, other global states: same subset
    assert torch.equal(torch.get_rng_state(), torch_state)  # and the global generators are left alone
    assert [ex["i"] for ex in small] == sorted(ex["i"] for ex in small)
    assert {ex["label"] for ex in small} == {0, 1}  # not the first 10 lines (one class)
    larger = sample_examples(numbered, 30, seed=7)
    assert {ex["i"] for ex in small} <= {ex["i"] for ex in larger}
    assert sample_examples(numbered, 10, seed=8) != small
    assert sample_examples(numbered, None, seed=7) == numbered == sample_examples(numbered, 500, seed=7)
    with pytest.raises(ValueError, match="positive"):
        sample_examples(numbered, 0, seed=7)
