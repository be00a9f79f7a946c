"""Text-to-text versions of the SuperGLUE tasks, so that a decoder runs the paper's tasks: each label is a word the
model generates (CB yes / no / maybe, RTE, BoolQ, WiC and WSC yes / no, COPA the text of the chosen alternative).

The same official files, validation and hub fallback as :mod:`.superglue` (each class subclasses its SuperGLUE task);
the prompts follow GPT-3's SuperGLUE prompts (Brown et al., 2020, appendix G): the input, a question that names the
possible answers, and ``Answer:``, after which the completion is " " + the verbalised label. Accuracy is the exact match
of the greedy generation with the gold label's word (:func:`~.kinds.generation.normalize_answer` on both sides); a
generation that matches none of the task's words counts as wrong and is reported as ``invalid`` (a fraction).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from .base import Example
from .kinds.generation import GenerationTask, normalize_answer
from .superglue import CB, COPA, RTE, WSC, BoolQ, WiC

#: Suffix of every text-to-text task name: ``cb`` -> ``cb-t2t``.
T2T_SUFFIX = "-t2t"


class Text2TextTask(GenerationTask):
    """A classification task answered by generating the label's word (its ``verbalizer``, in label id order)."""

    verbalizer: tuple[str, ...] = ()
    metric_names = ("accuracy", "completion_loss", "perplexity", "invalid")
    main_metric = "accuracy"

    @abstractmethod
    def prompt(self, example: Example) -> str:
        """The model input, ending with the answer cue."""

    def choices(self, example: Example) -> list[str]:
        """The completion of each label id for this example (COPA's depend on the example)."""
        return list(self.verbalizer)

    def format(self, example: Example) -> tuple[str, str | None]:
        label = example.get("label")
        return self.prompt(example), None if label is None else " " + self.choices(example)[label]

    def label_of(self, example: Example, generated: str) -> int | None:
        """The label id whose word the generation is (after normalisation), or None for none of them."""
        said = normalize_answer(generated)
        for i, word in enumerate(self.choices(example)):
            if normalize_answer(word) == said:
                return i
        return None

    def score(self, examples: Sequence[Example], generated: Sequence[str]) -> dict[str, float]:
        """``accuracy`` (exact match of the gold label's word), ``invalid`` (generations naming no label) and, where
        the task reports it, ``macro_f1`` over the task's labels."""
        pairs = [(ex["label"], self.label_of(ex, text)) for ex, text in zip(examples, generated)
                 if ex.get("label") is not None]
        if not pairs:
            return {name: float("nan") for name in ("accuracy", "invalid")}
        gold = np.array([g for g, _ in pairs])
        pred = np.array([-1 if p is None else p for _, p in pairs])
        out = {"accuracy": float((gold == pred).mean()), "invalid": float((pred == -1).mean())}
        if "macro_f1" in self.metric_names:
            out["macro_f1"] = macro_f1_over(pred, gold, len(self.labels))
        return out

    def describe(self, example: Example, generated: str) -> dict[str, Any]:
        """The generation and the label it names (None when it names none)."""
        label = self.label_of(example, generated)
        return {"prediction": generated, "label": None if label is None else self.labels[label]}


def macro_f1_over(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    """Mean F1 of the classes 0..num_labels-1 present in gold or predictions; an invalid prediction (-1) is a miss
    for its gold class and adds no class of its own. As classification's ``macro_f1`` (sklearn's
    ``f1_score(average="macro")``, over the classes that occur), a class absent from both is left out, where
    ``f1_score(labels=range(k))`` would count it as 0."""
    scores = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


class BoolQT2T(Text2TextTask, BoolQ):
    """BoolQ as text: passage and question -> yes / no."""

    name = "boolq" + T2T_SUFFIX
    verbalizer = ("no", "yes")  # labels False, True

    def prompt(self, example: Example) -> str:
        question = example["question"].strip()
        return f"{example['passage']}\nQuestion: {question}{'' if question.endswith('?') else '?'}\nAnswer:"


class CBT2T(Text2TextTask, CB):
    """CB as text: premise and hypothesis -> yes (entailment) / no (contradiction) / maybe (neutral)."""

    name = "cb" + T2T_SUFFIX
    verbalizer = ("yes", "no", "maybe")
    metric_names = ("accuracy", "macro_f1", "completion_loss", "perplexity", "invalid")

    def prompt(self, example: Example) -> str:
        return f"{example['premise']}\nQuestion: {example['hypothesis']} Yes, no, or maybe?\nAnswer:"


class RTET2T(Text2TextTask, RTE):
    """RTE as text: premise and hypothesis -> yes (entailment) / no."""

    name = "rte" + T2T_SUFFIX
    verbalizer = ("yes", "no")

    def prompt(self, example: Example) -> str:
        return f"{example['premise']}\nQuestion: {example['hypothesis']} Yes or no?\nAnswer:"


class WiCT2T(Text2TextTask, WiC):
    """WiC as text: two sentences and a word -> yes (same sense) / no."""

    name = "wic" + T2T_SUFFIX
    verbalizer = ("no", "yes")

    def prompt(self, example: Example) -> str:
        return (f"Sentence 1: {example['sentence1']}\nSentence 2: {example['sentence2']}\nQuestion: Is the word "
                f"'{example['word']}' used in the same sense in the two sentences above? Yes or no?\nAnswer:")


class WSCT2T(Text2TextTask, WSC):
    """WSC as text: passage, pronoun and candidate -> yes (the pronoun refers to it) / no."""

    name = "wsc" + T2T_SUFFIX
    verbalizer = ("no", "yes")

    def prompt(self, example: Example) -> str:
        target = example["target"]
        return (f"{example['text']}\nQuestion: In the passage above, does the pronoun '{target['span2_text']}' "
                f"refer to '{target['span1_text']}'? Yes or no?\nAnswer:")


class COPAT2T(Text2TextTask, COPA):
    """COPA as text: premise, cause or effect, two alternatives -> the text of the right alternative."""

    name = "copa" + T2T_SUFFIX

    def choices(self, example: Example) -> list[str]:
        return [example["choice1"], example["choice2"]]

    def prompt(self, example: Example) -> str:
        return (f"{example['premise']} What was the {example['question']}?\nOption 1: {example['choice1']}\n"
                f"Option 2: {example['choice2']}\nAnswer:")


TEXT2TEXT_TASKS = (BoolQT2T, CBT2T, COPAT2T, RTET2T, WiCT2T, WSCT2T)
