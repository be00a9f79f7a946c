"""The loss pass vouching for greedy completions: the scorer generates only the prompts whose greedy completion the
loss pass could not confirm, and its completions are exactly those of generating every prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from adaprefix.tasks import CustomGenerationTask
from adaprefix.tasks.kinds.generation import generate_completions, own_generation_config
from adaprefix.training.completion_loss import (GREEDY_MARGIN, greedy_agrees, logits_preprocessor, row_fingerprints,
                                                trainer_class)
from adaprefix.training.generation import GenerationScorer
from decoder_helpers import tiny_llama, word_tokenizer

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]  # ids 4..11
LEARNED = [("a b c", " d"), ("b b", " e f"), ("h g f", " c"), ("c a", " g h"), ("d e f g", " a"), ("e", " b")]
EOS = 2


def _greedy_by_hand(model, prompt: list[int], budget: int) -> list[int]:
    """Greedy decoding without a cache, one full forward per token (no adaprefix code): tokens up to EOS."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(budget):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == EOS:
                break
            out.append(token)
            ids.append(token)
    return out


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def learned(tok, tmp_path_factory):
    """A tiny Llama that has learned LEARNED's completions by heart, and the task over them."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in LEARNED))
    task = CustomGenerationTask(path, path)
    batch = task.collator(tok)(task.encode(task.load("train"), tok, max_length=32).rows)
    model = tiny_llama(len(tok), seed=3).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        model(**batch).loss.backward()
        optimiser.step()
    return task, model.eval()


def _dev(task, wrong: set[int]):
    """LEARNED's examples, the references of those in ``wrong`` replaced by a completion the model did not learn."""
    return [{"prompt": ex["prompt"], "completion": " h h" if i in wrong else ex["completion"]}
            for i, ex in enumerate(task.load("train"))]


def _evaluate(task, tok, model, dev, tmp_path, told=None, passed=None, **training_args):
    """A scorer told ``dev``'s rows in order ``told``, and the Trainer's loss pass over them in order ``passed``
    (both: as encoded), with the scorer's compute_metrics: the scorer, and the pass's metrics."""
    rows = task.encode(dev, tok, max_length=32).rows
    told, passed = told or range(len(rows)), passed or told or range(len(rows))
    scorer = GenerationScorer(task, tok, {"dev": dev}, max_length=32, batch_size=4,
                              eval_rows={"dev": [rows[i] for i in told]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none", use_cpu=True,
                             label_names=["labels"], disable_tqdm=True, **training_args)
    trainer = trainer_class(task, Trainer)(model=model, args=args, data_collator=task.collator(tok),
                                           compute_metrics=scorer.compute_metrics,
                                           preprocess_logits_for_metrics=logits_preprocessor(task))
    metrics = trainer.evaluate(Dataset.from_list([rows[i] for i in passed]), metric_key_prefix="dev")
    return scorer, metrics


def test_the_learned_model_reproduces_its_references(learned, tok):
    """The premise of the tests below, checked by hand: greedy decoding completes every learned prompt with its
    reference and then EOS."""
    task, model = learned
    for prompt, completion in LEARNED:
        ids = tok(prompt)["input_ids"]
        assert _greedy_by_hand(model, ids, 10) == tok(completion, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("wrong", [set(), {1, 4}, set(range(len(LEARNED)))])
def test_vouched_completions_are_exactly_the_generated_ones(learned, tok, tmp_path, wrong):
    """Only the prompts whose reference greedy decoding reproduces are vouched for; the others are generated; the
    completions equal greedy decoding by hand for every prompt."""
    task, model = learned
    dev = _dev(task, wrong)
    scorer, metrics = _evaluate(task, tok, model, dev, tmp_path)
    texts = scorer.completions("dev", model)
    assert scorer.last_counts == {"vouched": len(dev) - len(wrong), "generated": len(wrong)}
    budget = scorer.max_new_tokens["dev"]
    assert texts == [tok.decode(_greedy_by_hand(model, tok(ex["prompt"])["input_ids"], budget))
                     for ex in dev]
    assert "dev_completion_loss" in metrics  # the task's own metrics pass through


@pytest.mark.parametrize("told", [None, [1, 0, 2, 3, 4, 5]])
def test_a_pass_in_another_order_vouches_for_nothing(learned, tok, tmp_path, told):
    """The scorer is told one row order and the loss pass goes in another: its word cannot be placed, so every
    prompt is generated (and the completions are still right)."""
    task, model = learned
    dev = _dev(task, {2})
    scorer, _ = _evaluate(task, tok, model, dev, tmp_path, told=told, passed=[0, 1, 2, 3, 5, 4] if told is None
                          else [0, 1, 2, 3, 4, 5])
    texts = scorer.completions("dev", model)
    assert scorer.last_counts == {"vouched": 0, "generated": len(dev)}
    assert texts == generate_completions(model, tok, scorer.prompts["dev"], scorer.max_new_tokens["dev"], 4)


def test_the_order_the_scorer_is_told_is_any_order(learned, tok, tmp_path):
    """Rows told (and passed) in another order than the examples: the vouched completions land on their prompts."""
    task, model = learned
    dev = _dev(task, {0, 3})
    scorer, _ = _evaluate(task, tok, model, dev, tmp_path, told=[5, 3, 1, 0, 2, 4])
    texts = scorer.completions("dev", model)
    assert scorer.last_counts == {"vouched": 4, "generated": 2}
    assert texts == generate_completions(model, tok, scorer.prompts["dev"], scorer.max_new_tokens["dev"], 4)


def test_a_vouch_holds_for_one_call(learned, tok, tmp_path):
    """The next epoch's model is another model: what one loss pass vouched for is used once, then forgotten."""
    task, model = learned
    scorer, _ = _evaluate(task, tok, model, _dev(task, set()), tmp_path)
    first = scorer.completions("dev", model)
    assert scorer.last_counts["vouched"] == len(LEARNED)
    assert scorer.completions("dev", model) == first
    assert scorer.last_counts == {"vouched": 0, "generated": len(LEARNED)}


def test_a_reference_cut_short_or_past_the_budget_is_not_vouched(learned, tok, tmp_path):
    """A row whose labelled tokens end before EOS (truncated at max_length) would go on generating past them; a
    reference and its EOS longer than the token budget would be cut by it."""
    task, model = learned
    scorer, _ = _evaluate(task, tok, model, _dev(task, set()), tmp_path)
    rows, agree = scorer.rows["dev"], np.ones(len(LEARNED), dtype=bool)
    cut = [(ids[:-1], labels[:-1]) for ids, labels in rows]  # EOS dropped from every reference
    assert scorer._completions("dev", cut, agree) == {}
    scorer.max_new_tokens["dev"] = 2  # one word and EOS: " d", " c", " a", " b" fit; " e f" and " g h" do not
    assert sorted(scorer._completions("dev", rows, agree).values()) == ["a", "b", "c", "d"]
    scorer.max_new_tokens["dev"] = 1
    assert scorer._completions("dev", rows, agree) == {}


def test_eval_rows_must_name_eval_sets(learned, tok):
    task, _ = learned
    with pytest.raises(ValueError, match=r"'test'"):
        GenerationScorer(task, tok, {"dev": _dev(task, set())}, 32, 4, eval_rows={"test": []})


def test_greedy_agrees_by_hand():
    """Row 0 wins at both labelled columns; row 1 leads by less than the margin at one; row 2's argmax is another
    token; row 3's only miss is at an unlabelled column; row 4 has no labelled token."""
    logits = torch.zeros(5, 2, 4)
    targets = torch.tensor([[1, 2], [1, 2], [1, 2], [1, 2], [0, 0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False], [False, False]])
    logits[0, 0, 1], logits[0, 1, 2] = 5.0, 5.0
    logits[1, 0, 1], logits[1, 1, 2], logits[1, 1, 3] = 5.0, 5.0, 5.0 - GREEDY_MARGIN / 2
    logits[2, 0, 1], logits[2, 1, 3] = 5.0, 5.0
    logits[3, 0, 1], logits[3, 1, 3] = 5.0, 5.0
    assert greedy_agrees(logits, targets, mask).tolist() == [True, False, False, True, False]
    logits[1, 1, 3] = 5.0 - 2 * GREEDY_MARGIN
    assert greedy_agrees(logits, targets, mask).tolist()[1]
    assert not greedy_agrees(logits.bfloat16(), targets, mask).any()  # lower precision is not vouched for
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not greedy_agrees(logits, targets, mask).any()


def test_fingerprints_ignore_padding_and_tell_rows_apart():
    def by_hand(ids):
        return sum(t * pow(31, rank, 16_777_213) for rank, t in enumerate(ids, start=1)) % 16_777_213

    rows = [[1, 7, 9, 4], [1, 9, 7, 4], [1, 7, 9], [300_000, 5]]
    width = 6
    left = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    right = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    left_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    right_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    expected = [by_hand(r) for r in rows]
    assert row_fingerprints(left, left_mask).tolist() == expected
    assert row_fingerprints(right, right_mask).tolist() == expected
    assert len(set(expected)) == len(rows) and max(expected) < 2 ** 24
    assert row_fingerprints(torch.tensor([rows[0]])).tolist() == [expected[0]]


def test_generation_without_rows_generates_everything(learned, tok):
    """A scorer given no eval rows (as before vouching existed) generates every prompt."""
    task, model = learned
    dev = _dev(task, set())
    scorer = GenerationScorer(task, tok, {"dev": dev}, 32, 4)
    texts = scorer.completions("dev", model)
    assert scorer.last_counts == {"vouched": 0, "generated": len(dev)}
    assert texts == generate_completions(model, tok, scorer.prompts["dev"], scorer.max_new_tokens["dev"], 4)


@pytest.mark.parametrize("how", ["bf16 mixed precision", "bf16 weights"])
def test_nothing_is_vouched_for_below_float32(learned, tok, tmp_path, how):
    """Under mixed precision the logits come back float32 from a bf16 forward; bf16 weights round as much. Either
    way the margin means nothing, so every prompt is generated."""
    import copy

    task, model = learned
    dev = _dev(task, set())
    if how == "bf16 weights":
        scorer, _ = _evaluate(task, tok, copy.deepcopy(model).to(torch.bfloat16), dev, tmp_path)
    else:
        scorer, _ = _evaluate(task, tok, model, dev, tmp_path, bf16=True)
    assert scorer._vouched == {"dev": {}}  # matched to its rows, and vouching for none of them
    float32, _ = _evaluate(task, tok, model, dev, tmp_path)
    assert len(float32._vouched["dev"]) == len(LEARNED)  # the same rows in float32: all vouched


def test_greedy_is_the_argmax_whatever_the_models_generation_config(learned, tok):
    """A checkpoint's own generation settings (an Instruct model's repetition penalty, suppressed tokens, a minimum
    length) do not steer evaluation: completions are the argmax, as the loss pass's check assumes; and the model's
    settings are back afterwards."""
    import copy

    task, model = learned
    model = copy.deepcopy(model)
    config = model.generation_config
    config.repetition_penalty, config.min_new_tokens = 20.0, 4
    config.suppress_tokens = tok(" d", add_special_tokens=False)["input_ids"]
    prompts = [tok(p)["input_ids"] for p, _ in LEARNED]
    texts = generate_completions(model, tok, prompts, 6, batch_size=4)
    assert texts == [tok.decode(_greedy_by_hand(model, ids, 6)) for ids in prompts]
    assert texts[0] == "d"  # the suppressed token: the model's settings were not applied
    assert model.generation_config is config and config.repetition_penalty == 20.0
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))
    assert generate_completions(wrapped, tok, prompts, 6, batch_size=4) == texts  # LoRA B = 0: the same model


def test_generations_that_overlap_on_one_model_leave_its_generation_config_as_it_was(learned, tok):
    """Two generations on one model that overlap (threads of a server) and end in either order: the model's config
    stays blank while either runs, and is its own again once both have ended, never a blank one for good."""
    import copy
    import threading

    _, model = learned
    model = copy.deepcopy(model)
    own = model.generation_config
    prompts = [tok(p)["input_ids"] for p, _ in LEARNED]
    expected = generate_completions(model, tok, prompts, 6, batch_size=4)
    assert expected[0] == "d"
    # the model's own settings would change what it generates, were they used: its first answer's first token
    own.suppress_tokens = tok(LEARNED[0][1], add_special_tokens=False)["input_ids"][:1]
    first, second = own_generation_config(model), own_generation_config(model)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to start ends first: the second still runs
    assert model.generation_config is not own and not model.generation_config.suppress_tokens
    second.__exit__(None, None, None)
    assert model.generation_config is own
    with own_generation_config(model):  # nothing of the two blocks is left over: the next one blanks it again
        assert model.generation_config is not own
    assert model.generation_config is own

    results, errors = [], []

    def generate():
        try:
            results.append(generate_completions(model, tok, prompts, 6, batch_size=2))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=generate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [expected] * 4
    assert model.generation_config is own
