"""The completion loss with logits only at completion positions: the same loss, gradients and evaluation as
transformers' own full-logit loss, the LM head run on the completion columns only, and the fallback for a model
without ``logits_to_keep``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from adaprefix import AdaptivePrefixConfig, attach
from adaprefix.tasks import CustomGenerationTask
from adaprefix.training.completion_loss import (accepts_logits_to_keep, completion_columns, completion_nll,
                                                logits_preprocessor, trainer_class)
from decoder_helpers import tiny_llama, word_tokenizer

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]  # ids 4..11
PAIRS = [("a b c d e f", " g"), ("b", " c d e"), ("h g f", " e d"), ("c c", " a"), ("d e f g h a b", " c d")]


@pytest.fixture
def task(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    return CustomGenerationTask(train, train)


@pytest.fixture
def tok():
    return word_tokenizer(WORDS)


def _batch(task, tok):
    rows = task.encode([{"prompt": p, "completion": c} for p, c in PAIRS], tok, max_length=32).rows
    return task.collator(tok)(rows)


def _gpt2(vocab):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=1, eos_token_id=2))


def _by_hand(model, batch):
    """Per row: summed NLL and count of the labelled tokens, from the model's full logits (no adaprefix code)."""
    logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().log_softmax(-1)
    sums, counts = [], []
    for row, labels in enumerate(batch["labels"].tolist()):
        terms = [logp[row, t - 1, y] for t, y in enumerate(labels) if y != -100]
        sums.append(-torch.stack(terms).sum())
        counts.append(len(terms))
    return torch.stack(sums), torch.tensor(counts)


def test_columns_are_those_before_each_labelled_token():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    assert completion_columns(labels).tolist() == [0, 1, 2]


@pytest.mark.parametrize("make", ["llama", "gpt2", "llama-apt"])
def test_nll_equals_the_full_logits_and_the_head_sees_completion_columns_only(task, tok, make):
    model = _gpt2(len(tok)) if make == "gpt2" else tiny_llama(len(tok))
    if make == "llama-apt":
        model = attach(model, AdaptivePrefixConfig(method="apt", prefix_length=3, prefix_init_std=0.5))
    model.eval()  # GPT-2's dropout would make two forwards differ
    batch = _batch(task, tok)
    head = model.get_output_embeddings()
    widths = []
    handle = head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    nll, count = completion_nll(model, batch)
    handle.remove()
    reference, counts = _by_hand(model, batch)
    torch.testing.assert_close(nll, reference, rtol=1e-5, atol=1e-5)
    assert count.tolist() == counts.tolist()
    columns = (batch["labels"][:, 1:] != -100).any(0).sum().item()
    assert widths == [columns] and columns < batch["input_ids"].shape[1] - 1


class NoKeepLM(torch.nn.Module):
    """A causal LM whose forward does not take ``logits_to_keep``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_a_model_without_logits_to_keep_gets_the_same_loss_from_full_logits(task, tok):
    inner = tiny_llama(len(tok))
    model = NoKeepLM(inner)
    assert not accepts_logits_to_keep(model) and accepts_logits_to_keep(inner)
    batch = _batch(task, tok)
    nll, count = completion_nll(model, batch)
    reference, counts = _by_hand(inner, batch)
    torch.testing.assert_close(nll, reference, rtol=1e-5, atol=1e-5)
    assert count.tolist() == counts.tolist()


def test_peft_wrappers_are_seen_through(tok):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(len(tok)), peft.LoraConfig(task_type="CAUSAL_LM", r=2,
                                                                      target_modules=["q_proj"]))
    assert accepts_logits_to_keep(model)


def _trainer(cls, model, task, tok, tmp_path, accumulation):
    rows = task.encode([{"prompt": p, "completion": c} for p, c in PAIRS], tok, max_length=32).rows
    args = TrainingArguments(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=2,
                             per_device_eval_batch_size=2, gradient_accumulation_steps=accumulation, max_steps=2,
                             learning_rate=1e-2, lr_scheduler_type="constant", report_to="none", use_cpu=True,
                             save_strategy="no", logging_strategy="no", seed=0, label_names=["labels"],
                             disable_tqdm=True)
    return cls(model=model, args=args, train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows),
               data_collator=task.collator(tok), compute_metrics=task.compute_metrics,
               preprocess_logits_for_metrics=logits_preprocessor(task) if cls is not Trainer
               else task.preprocess_logits_for_metrics)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_training_and_evaluation_match_the_trainers_own_loss(task, tok, tmp_path, accumulation):
    """Two optimiser steps (with uneven completions across micro-batches under accumulation) move the trainable
    parameters exactly as transformers' own causal-LM loss does, and the evaluation's completion loss agrees."""
    base = attach(tiny_llama(len(tok)), AdaptivePrefixConfig(method="apt", prefix_length=3))
    theirs_model, ours_model = copy.deepcopy(base), copy.deepcopy(base)
    theirs = _trainer(Trainer, theirs_model, task, tok, tmp_path, accumulation)
    ours = _trainer(trainer_class(task, Trainer), ours_model, task, tok, tmp_path, accumulation)
    assert type(ours).__name__ == "CompletionTrainer"
    before = {n: p.detach().clone() for n, p in ours_model.named_parameters() if p.requires_grad}
    theirs.train()
    ours.train()
    for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(before[n], p) for n, p in ours_model.named_parameters() if p.requires_grad)
    ev_theirs, ev_ours = theirs.evaluate(), ours.evaluate()
    assert ev_ours["eval_completion_loss"] == pytest.approx(ev_theirs["eval_completion_loss"], rel=1e-5)
    assert ev_ours["eval_loss"] == pytest.approx(ev_theirs["eval_loss"], rel=1e-5)


def test_other_tasks_keep_the_plain_trainer():
    class Classification:
        kind = "classification"

        @staticmethod
        def preprocess_logits_for_metrics(logits, labels):
            return logits

    assert trainer_class(Classification(), Trainer) is Trainer
    assert logits_preprocessor(Classification()) is Classification.preprocess_logits_for_metrics
