"""NER tasks: CoNLL readers, label sets, first-sub-token labelling, validation, truncation, seqeval."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForTokenClassification, EvalPrediction

from adaprefix.tasks import DataError, get_task


def test_conll03_reader(ner_dir):
    task = get_task("conll2003")
    assert task.name == "conll03"
    examples = task.load("dev", ner_dir)  # dev -> valid.txt
    assert [ex["tokens"] for ex in examples] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["Ouagadougou", "is", "far"],
    ]
    assert examples[1]["tags"] == ["B-PER", "I-PER"]
    assert examples[0]["source"].endswith("valid.txt:3")
    assert task.labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert examples[1]["tag_ids"] == [4, 8]
    assert task.eval_split == "dev" and task.test_split == "test" and task.main_metric == "f1"
    assert task.auto_model_class() is AutoModelForTokenClassification


def test_conll04_reader(ner_dir):
    task = get_task("conll04")
    examples = task.load("train", ner_dir)
    assert [ex["tokens"] for ex in examples] == [["John", "Smith", "in", "Boston"], ["IBM", "grew"]]
    assert examples[0]["tags"] == ["B-Peop", "I-Peop", "O", "B-Loc"]
    assert task.labels == ["O", "B-Loc", "B-Org", "B-Other", "B-Peop", "I-Loc", "I-Org", "I-Other", "I-Peop"]


def test_ontonotes_labels_from_train(ner_dir):
    task = get_task("ontonotes")
    examples = task.load("test", ner_dir)
    assert examples[0]["tokens"] == ["Japan", "'s", "Sony", "Corp."]
    assert task.labels == ["O", "B-CARDINAL", "B-GPE", "B-ORG", "I-ORG", "I-PERCENT"]


def test_ontonotes_multi_column_and_comments(tmp_path, write_text):
    text = (
        "#begin document (bc/cctv/00/cctv_0001); part 000\n"
        "Japan NNP B-GPE\nsays VBZ O\n"
        "#end document\n"
        "Sony NNP B-ORG\n"
    )
    write_text(tmp_path / "ontonotes/train.conll", text)
    examples = get_task("ontonotes").load("train", tmp_path)
    assert [ex["tokens"] for ex in examples] == [["Japan", "says"], ["Sony"]]


def test_ontonotes_inconsistent_columns(tmp_path, write_text):
    path = write_text(tmp_path / "ontonotes/train.txt", "Japan NNP B-GPE\nsays O\n")
    with pytest.raises(DataError) as err:
        get_task("ontonotes").load("train", tmp_path)
    msg = str(err.value)
    assert f"{path}:2" in msg and "3 columns" in msg and "got 2 columns" in msg


def test_ontonotes_bracket_tags_rejected(tmp_path, write_text):
    path = write_text(tmp_path / "ontonotes/train.txt", "Japan (GPE)\nsays *\n")
    with pytest.raises(DataError, match="BIO") as err:
        get_task("ontonotes").load("train", tmp_path)
    assert f"{path}:1" in str(err.value)


def test_conll03_wrong_column_count(tmp_path, write_text):
    path = write_text(tmp_path / "conll2003/train.txt", "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(DataError) as err:
        get_task("conll03").load("train", tmp_path)
    msg = str(err.value)
    assert f"{path}:2" in msg and "4 columns (token POS chunk NER)" in msg and "got 3 columns" in msg


def test_conll04_wrong_column_count(tmp_path, write_text):
    path = write_text(tmp_path / "conll04/dev.txt", "#doc 1\n0\tJohn\tB-Peop\n")
    with pytest.raises(DataError) as err:
        get_task("conll04").load("dev", tmp_path)
    assert f"{path}:2" in str(err.value) and "Expected 5 columns" in str(err.value)


def test_unknown_tag_in_dev(ner_dir, write_text):
    path = write_text(ner_dir / "ontonotes/dev.txt", "Paris B-GPE\nin O\nspring B-SEASON\n")
    with pytest.raises(DataError) as err:
        get_task("ontonotes").load("dev", ner_dir)
    msg = str(err.value)
    assert f"{path}:3" in msg and "'B-SEASON'" in msg and "'B-GPE'" in msg


def test_unknown_tag_against_fixed_set(tmp_path, write_text):
    path = write_text(tmp_path / "conll2003/train.txt", "EU NNP B-NP B-COUNTRY\n")
    with pytest.raises(DataError) as err:
        get_task("conll03").load("train", tmp_path)
    assert f"{path}:1" in str(err.value) and "B-COUNTRY" in str(err.value)


def test_empty_ner_split(tmp_path, write_text):
    path = write_text(tmp_path / "conll2003/test.txt", "-DOCSTART- -X- -X- O\n\n")
    with pytest.raises(DataError, match="no examples") as err:
        get_task("conll03").load("test", tmp_path)
    assert str(path) in str(err.value)


def test_first_subtoken_labelling(ner_dir, tokenizer):
    task = get_task("conll03")
    examples = task.load("train", ner_dir)
    enc = task.encode(examples, tokenizer, max_length=32)
    row = enc.dataset[2]  # Ouagadougou is far
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    n = len(tokenizer.tokenize("Ouagadougou"))
    assert n > 1  # the test needs a word that splits
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    b_loc, o = task.label2id["B-LOC"], task.label2id["O"]
    assert row["labels"] == [-100, b_loc] + [-100] * (n - 1) + [o, o, -100]
    assert enc.num_truncated == 0 and enc.has_labels


def test_ner_truncation_counted(tmp_path, write_text, tokenizer):
    long = "\n".join(f"w{i} NN B-NP O" for i in range(40))
    write_text(tmp_path / "conll2003/train.txt", f"EU NNP B-NP B-ORG\n\n{long}\n")
    task = get_task("conll03")
    enc = task.encode(task.load("train", tmp_path), tokenizer, max_length=10)
    assert enc.num_truncated == 1
    assert len(enc.dataset[1]["input_ids"]) == 10 and len(enc.dataset[1]["labels"]) == 10
    assert enc.dataset[1]["labels"][0] == -100 and enc.dataset[1]["labels"][-1] == -100


def test_token_collator_pads_labels(ner_dir, tokenizer):
    task = get_task("conll04")
    enc = task.encode(task.load("train", ner_dir), tokenizer, max_length=32)
    batch = task.collator(tokenizer)([enc.dataset[0], enc.dataset[1]])
    assert batch["input_ids"].shape == batch["labels"].shape
    short = len(enc.dataset[1]["labels"])
    assert (batch["labels"][1, short:] == -100).all()


def _one_hot(ids, n):
    return np.eye(n)[np.asarray(ids)]


def test_seqeval_metric_known_predictions():
    task = get_task("conll03", labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    # Gold: PER(1-2), LOC(4) in sentence 1; LOC(1) in sentence 2. Predicted: PER right, LOC(4) as PER,
    # LOC in sentence 2 right, plus a spurious PER. -> 2 correct of 4 predicted, 3 gold.
    labels = np.array([[-100, 1, 2, 0, 3, -100], [-100, 3, 0, 0, -100, -100]])
    preds = np.array([[0, 1, 2, 0, 1, 0], [0, 3, 1, 0, 0, 0]])
    out = task.compute_metrics(EvalPrediction(predictions=_one_hot(preds, 5), label_ids=labels))
    assert out["precision"] == pytest.approx(2 / 4)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * (0.5 * 2 / 3) / (0.5 + 2 / 3))


def test_seqeval_ignores_masked_positions():
    task = get_task("conll03", labels=["O", "B-PER", "I-PER"])
    labels = np.array([[-100, 1, -100, 2, -100]])
    preds = np.array([[2, 1, 0, 2, 1]])  # wrong only where labels are -100
    out = task.compute_metrics(EvalPrediction(predictions=_one_hot(preds, 3), label_ids=labels))
    assert out == {"f1": 1.0, "precision": 1.0, "recall": 1.0}


def _tiny_roberta_tokenizer(tmp_path, **kwargs):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import RobertaTokenizer

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["Peter Blackburn went to Brussels", "EU rejects German call"] * 3,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(tmp_path))
    return RobertaTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"), **kwargs)


def test_bpe_tokenizer_needs_add_prefix_space(ner_dir, tmp_path):
    task = get_task("conll03")
    examples = task.load("train", ner_dir)[:2]
    plain = _tiny_roberta_tokenizer(tmp_path / "a")
    with pytest.raises(ValueError, match="add_prefix_space=True"):
        task.encode(examples, plain, max_length=32)
    tok = _tiny_roberta_tokenizer(tmp_path / "b", add_prefix_space=True)
    enc = task.encode(examples, tok, max_length=64)
    row = enc.dataset[1]  # Peter Blackburn
    words = tok(["Peter", "Blackburn"], is_split_into_words=True).word_ids()
    expected, prev = [], None
    for w in words:
        expected.append(-100 if w is None or w == prev else [task.label2id["B-PER"], task.label2id["I-PER"]][w])
        prev = w
    assert row["labels"] == expected
    assert sum(label != -100 for label in row["labels"]) == 2


def test_a_split_scored_shortest_first_gives_the_same_metrics(ner_dir, tokenizer, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    from tests.tiny_models import tiny_config

    task = get_task("conll2003")
    encoded = task.encode(task.load("dev", ner_dir), tokenizer, 64)
    by_length = list(encoded.dataset_by_length)
    lengths = [len(row["input_ids"]) for row in by_length]
    assert lengths == sorted(lengths) and len(set(lengths)) == 3  # the fixture's three lengths, reordered
    assert sorted(map(str, by_length)) == sorted(map(str, encoded.rows))  # the same rows, none lost or changed
    torch.manual_seed(0)
    config = tiny_config("bert", vocab_size=tokenizer.vocab_size, num_labels=len(task.labels))
    model = AutoModelForTokenClassification.from_config(config).eval()
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2,
                                                          report_to="none", use_cpu=True),
                      data_collator=task.collator(tokenizer), compute_metrics=task.compute_metrics)
    in_order = trainer.evaluate(encoded.dataset)
    shortest_first = trainer.evaluate(encoded.dataset_by_length)
    for key in ("eval_f1", "eval_precision", "eval_recall"):  # the loss is a mean of batch means: it may move
        assert shortest_first[key] == in_order[key]
