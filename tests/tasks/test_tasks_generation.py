"""Prompt -> completion tasks: exact-match normalisation, the completion-only loss against a hand computation,
truncation, batched generation, bad inputs, and the text-to-text SuperGLUE tasks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from adaprefix.tasks import (CustomGenerationTask, DataError, TokenizerError, custom_task, exact_match, get_task,
                             normalize_answer)
from adaprefix.tasks.kinds.generation import generate_completions
from decoder_helpers import tiny_llama, word_tokenizer

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]  # ids 4..11


@pytest.mark.parametrize("text, normal", [
    ("  Yes. ", "yes"), ("YES!!", "yes"), ("no ...", "no"), ("maybe?", "maybe"),
    ("yes,\n  because\tit is", "yes, because it is"),  # inner punctuation stays; whitespace runs become one space
    ("\uff39\uff45\uff53", "yes"),  # full-width letters (NFKC)
    ("U.S.", "u.s"), ("3.5", "3.5"), ("\u00bfQu\u00e9?", "\u00bfqu\u00e9"), ("", ""), (" . ", ""),
])
def test_normalisation(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_counts_normalised_equality():
    assert exact_match(["Yes.", "no", "maybe so", " The cat"], [" yes", "No", "maybe", "the cat."]) == 0.75
    assert math.isnan(exact_match([], []))


def _examples(*pairs):
    return [{"prompt": p, "completion": c} for p, c in pairs]


def _task(tmp_path, rows=(("a b c", " d e"),)):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    return CustomGenerationTask(train, train)


def test_labels_cover_the_completion_and_eos_only(tmp_path):
    tok = word_tokenizer(WORDS)  # <s>=1 </s>=2, a=4 ... h=11; no pad token
    enc = _task(tmp_path).encode(_examples(("a b c", " d e"), ("f", " g")), tok, max_length=32)
    rows = list(enc.dataset)
    assert rows[0]["input_ids"] == [1, 4, 5, 6, 7, 8, 2]
    assert rows[0]["labels"] == [-100, -100, -100, -100, 7, 8, 2]
    assert rows[1]["input_ids"] == [1, 9, 10, 2] and rows[1]["labels"] == [-100, -100, 10, 2]
    assert tok.pad_token == "</s>", "a tokenizer without a pad token pads with EOS"
    batch = _task(tmp_path).collator(tok)(rows)
    assert batch["input_ids"][1].tolist() == [1, 9, 10, 2, 2, 2, 2]  # right-padded with EOS (id 2) ...
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0]  # ... masked out ...
    assert batch["labels"][1].tolist() == [-100, -100, 10, 2, -100, -100, -100]  # ... and not learned


def test_loss_is_the_mean_nll_of_completion_tokens(tmp_path):
    tok = word_tokenizer(WORDS)
    task = _task(tmp_path)
    rows = list(task.encode(_examples(("a b c", " d e"), ("f", " g")), tok, max_length=32).dataset)
    batch = task.collator(tok)(rows)
    model = tiny_llama(len(tok))
    out = model(**batch)
    logp = out.logits.log_softmax(-1)
    # By hand: example 0 predicts d, e, </s> at positions 4, 5, 6 from the logits at 3, 4, 5; example 1 predicts g
    # and </s> at positions 2, 3 from the logits at 1, 2.
    terms = [logp[0, 3, 7], logp[0, 4, 8], logp[0, 5, 2], logp[1, 1, 10], logp[1, 2, 2]]
    reference = -torch.stack(terms).mean()
    torch.testing.assert_close(out.loss, reference)
    sums = task.preprocess_logits_for_metrics(out.logits, batch["labels"])
    torch.testing.assert_close(sums[:, 1], torch.tensor([3.0, 2.0]))
    metrics = task.compute_metrics(EvalPrediction(predictions=sums.detach().numpy(), label_ids=None))
    assert metrics["completion_loss"] == pytest.approx(reference.item(), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(reference.item()), rel=1e-5)


def test_truncation_cuts_the_prompt_start_and_keeps_bos_and_completion(tmp_path):
    tok = word_tokenizer(WORDS)
    enc = _task(tmp_path).encode(_examples(("a b c d e f", " g h")), tok, max_length=6)
    row = enc.dataset[0]
    # 10 tokens (<s> a..f g h </s>) into 6: the completion (g h </s>) whole, the prompt <s> + its last two words.
    assert row["input_ids"] == [1, 8, 9, 10, 11, 2] and row["labels"] == [-100, -100, -100, 10, 11, 2]
    assert enc.num_truncated == 1
    long_answer = _task(tmp_path).encode(_examples(("a b c d", " e f g h a b")), tok, max_length=6).dataset[0]
    # The prompt keeps half the budget (<s> c d); the completion is cut at its end (its EOS is lost).
    assert long_answer["input_ids"] == [1, 6, 7, 8, 9, 10] and long_answer["labels"] == [-100, -100, -100, 8, 9, 10]


def test_a_tokenizer_without_eos_is_refused(tmp_path):
    tok = word_tokenizer(WORDS)
    tok.eos_token = None
    with pytest.raises(TokenizerError, match="no EOS token"):
        _task(tmp_path).encode(_examples(("a", " b")), tok)


def test_batched_generation_returns_each_prompts_own_completion_in_order(tmp_path):
    tok = word_tokenizer(WORDS)
    task = _task(tmp_path)
    model = tiny_llama(len(tok), seed=3)
    examples = _examples(("a b c d e", None), ("f", None), ("g h", None), ("a", None), ("b c d", None))
    prompts = task.prompt_ids(examples, tok, max_length=32, max_new_tokens=5)
    together = generate_completions(model, tok, prompts, max_new_tokens=5, batch_size=2)
    alone = [generate_completions(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert together == alone
    assert len(set(alone)) > 1, "different prompts should not all give the same text (a mixed-up order would pass)"


# -- bring-your-own files: recognised, read, refused ----------------------------------------------------------------

def test_prompt_and_completion_fields_make_custom_data_generation(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "t.jsonl", [{"question": "2+2?", "answer": " 4"}])
    task = custom_task(train, train, prompt_column="question", completion_column="answer")
    assert isinstance(task, CustomGenerationTask) and task.data_kind == "generation"
    assert task.load("train") == [{"prompt": "2+2?", "completion": " 4", "source": f"{train}:1"}]
    classification = write_jsonl(tmp_path / "c.jsonl", [{"text": "fine", "label": "pos"}])
    assert custom_task(classification).data_kind == "classification"
    csv = tmp_path / "t.csv"
    csv.write_text("prompt,completion\nhello,\" world\"\n")
    assert custom_task(csv).load("train")[0]["completion"] == " world"


def test_a_misspelt_completion_column_is_named(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "2+2?", "answer": " 4"}])
    with pytest.raises(DataError) as err:
        custom_task(train)
    assert f"{train}:1: field 'completion'" in str(err.value) and "--prompt-column / --completion-column" in str(
        err.value)


@pytest.mark.parametrize("record, field, expected", [
    ({"prompt": "2+2?"}, "completion", "missing field"),
    ({"prompt": 4, "completion": " 4"}, "prompt", "Expected a string, got 4"),
    ({"prompt": "2+2?", "completion": "  "}, "completion", "empty text"),
    ({"prompt": "", "completion": " 4"}, "prompt", "empty text"),
])
def test_bad_records_name_file_line_and_field(tmp_path, write_jsonl, record, field, expected):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1?", "completion": " 2"}])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"prompt": "1+2?", "completion": " 3"}, record])
    task = custom_task(train, dev)
    with pytest.raises(DataError) as err:
        task.load("dev")
    assert f"{dev}:2: field {field!r}" in str(err.value) and expected in str(err.value)


def test_test_files_may_lack_completions(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1?", "completion": " 2"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "3+3?"}])
    task = custom_task(train, train, test)
    assert task.load("test")[0]["completion"] is None and task.test_split == "test"


def test_kind_is_explicit_and_checked_against_the_format(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1?", "completion": " 2"}])
    assert custom_task(train, kind="classification").data_kind == "classification"
    with pytest.raises(DataError, match="kind 'tagging' with format 'jsonl'"):
        custom_task(train, kind="tagging")
    with pytest.raises(DataError, match="field 'kind'"):
        custom_task(train, kind="chat")
    # A recorded kind and format rebuild the task without the train file (predicting from a finished run).
    train.unlink()
    assert custom_task(train, file_format="jsonl", kind="generation").data_kind == "generation"


# -- text-to-text SuperGLUE -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, prompt, completions", [
    ("cb-t2t", "It rained.\nQuestion: The ground is wet. Yes, no, or maybe?\nAnswer:", [" yes", " no", " maybe"]),
    ("rte-t2t", "A dog barks.\nQuestion: An animal makes noise. Yes or no?\nAnswer:", [" yes", " no"]),
    ("boolq-t2t", "Water -- Water is a liquid.\nQuestion: is water wet?\nAnswer:", [" yes", " no"]),
    ("wic-t2t", "Sentence 1: An emerging professional class.\nSentence 2: She has real class.\nQuestion: Is the "
                "word 'class' used in the same sense in the two sentences above? Yes or no?\nAnswer:", [" no", " yes"]),
    ("wsc-t2t", "Mark told Pete many lies about himself.\nQuestion: In the passage above, does the pronoun "
                "'himself' refer to 'Pete'? Yes or no?\nAnswer:", [" no", " yes"]),
    ("copa-t2t", "The man turned on the faucet. What was the effect?\nOption 1: The toilet filled with water.\n"
                 "Option 2: Water flowed from the spout.\nAnswer:", [" Water flowed from the spout.", " The sun was "
                                                                      "rising."]),
])
def test_text_to_text_prompts_and_verbalised_labels(superglue_dir, name, prompt, completions):
    task = get_task(name)
    assert task.kind == "generation" and task.main_metric == "accuracy"
    examples = task.load("train", superglue_dir)
    assert [task.format(ex) for ex in examples[:2]] == [(prompt, completions[0]),
                                                         (task.prompt(examples[1]), completions[1])]
    unlabelled = task.load("test", superglue_dir)[0]
    assert task.format(unlabelled) == (prompt, None)


def test_text_to_text_scores_verbalised_labels():
    task = get_task("cb-t2t")  # entailment/yes 0, contradiction/no 1, neutral/maybe 2
    examples = [{"label": 0}, {"label": 0}, {"label": 1}, {"label": 2}, {"label": 2}, {"label": None}]
    generated = ["Yes.", "no", " NO", "perhaps", "maybe", "yes"]
    scores = task.score(examples, generated)
    # Right: 1st, 3rd, 5th of the 5 labelled; "perhaps" names no label. The last example is unlabelled.
    assert scores["accuracy"] == pytest.approx(3 / 5) and scores["invalid"] == pytest.approx(1 / 5)
    # Per class F1 by hand: yes tp1 fn1 -> 2/3; no tp1 fp1 -> 2/3; maybe tp1 fn1 -> 2/3.
    assert scores["macro_f1"] == pytest.approx(2 / 3)
    assert task.describe({"label": None}, " Maybe") == {"prediction": " Maybe", "label": "neutral"}
    assert task.describe({"label": None}, "probably") == {"prediction": "probably", "label": None}


def test_copa_text_to_text_matches_the_alternative_text(superglue_dir):
    task = get_task("copa-t2t")
    ex = task.load("dev", superglue_dir)[0]
    assert task.label_of(ex, "water flowed from the spout") == 1
    assert task.label_of(ex, "The toilet filled with water") == 0
    assert task.label_of(ex, "1") is None


def test_text_to_text_tasks_are_registered(superglue_dir):
    from adaprefix.tasks import describe_tasks

    rows = {row.name: row for row in describe_tasks(superglue_dir)}
    for name in ("boolq-t2t", "cb-t2t", "copa-t2t", "rte-t2t", "wic-t2t", "wsc-t2t"):
        assert rows[name].kind == "generation" and rows[name].found
    assert rows["cb-t2t"].num_labels == 3


@pytest.mark.parametrize("gold, pred", [
    ([0, 0, 1, 1], [0, 1, 1, -1]),            # class 2 absent from both: left out, as classification's macro_f1
    ([0, 1, 2, 2, 1], [2, 1, 2, -1, -1]),     # invalid answers: misses of their gold class, no class of their own
])
def test_text_to_text_macro_f1_is_sklearns_over_the_classes_that_occur(gold, pred):
    from sklearn.metrics import f1_score

    from adaprefix.tasks.metrics import macro_f1
    from adaprefix.tasks.text2text import macro_f1_over

    occurring = sorted(set(gold) | {p for p in pred if p != -1})
    expected = f1_score(gold, pred, labels=occurring, average="macro")
    assert macro_f1_over(np.array(pred), np.array(gold), 3) == pytest.approx(expected)
    if -1 not in pred:
        assert macro_f1(pred, gold) == pytest.approx(expected)
