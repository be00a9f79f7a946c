"""Generation in a run: exact match from greedy completions at every evaluation, beside the Trainer's loss, and the
completions that `adaprefix predict` and `adaprefix eval` produce for a generation task.

The Trainer's evaluation gives the loss (``completion_loss``, ``perplexity``); :class:`GenerationScorer` adds what
only generating can tell (``exact_match``, or a text-to-text task's ``accuracy``). :class:`~.callbacks.EpochRecorder`
asks it for each eval set and writes both into the one epoch record, so the best epoch is chosen on the task's main
metric as for every other task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..files import atomic_write_json
from ..tasks.answers import unlabelled
from ..tasks.base import Example
from ..tasks.kinds.generation import GenerationTask, generate_completions

#: In a run folder: how many tokens `adaprefix predict` generates (the longest train/dev completion + margin).
GENERATION_FILE = "generation.json"


class GenerationScorer:
    """Greedy generation over each eval set's prompts, scored by the task (:meth:`GenerationTask.score`).

    The prompts are tokenized once; each set generates up to its own longest reference completion, its EOS and
    a margin (:meth:`GenerationTask.max_new_tokens`), in batches of ``batch_size`` left-padded prompts.
    """

    def __init__(self, task: GenerationTask, tokenizer: Any, eval_sets: dict[str, Sequence[Example]],
                 max_length: int, batch_size: int):
        self.task, self.tokenizer, self.batch_size = task, tokenizer, batch_size
        self.examples = dict(eval_sets)
        self.max_new_tokens = {name: task.max_new_tokens(ex, tokenizer) for name, ex in self.examples.items()}
        self.prompts = {name: task.prompt_ids(ex, tokenizer, max_length, self.max_new_tokens[name])
                        for name, ex in self.examples.items()}

    def __call__(self, name: str, model: Any) -> dict[str, float]:
        """The generation metrics of eval set ``name`` with ``model`` as it is now."""
        texts = generate_completions(model, self.tokenizer, self.prompts[name], self.max_new_tokens[name],
                                     self.batch_size)
        return self.task.score(self.examples[name], texts)


def write_generation_settings(run: Path, task: GenerationTask, tokenizer: Any,
                              examples: Sequence[Example]) -> dict[str, int]:
    """Record in the run folder how many tokens prediction generates: enough for the longest completion of
    ``examples`` (train and dev), its EOS and the margin."""
    settings = {"max_new_tokens": task.max_new_tokens(examples, tokenizer)}
    atomic_write_json(run / GENERATION_FILE, settings)
    return settings


def read_generation_settings(run: Path) -> dict[str, int]:
    """What :func:`write_generation_settings` recorded; {} for a run that has none."""
    import json

    path = Path(run) / GENERATION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def predict_completions(task: GenerationTask, tokenizer: Any, model: Any, inputs: Sequence[Example],
                        max_length: int, max_new_tokens: int, batch_size: int = 32) -> list[dict[str, Any]]:
    """Greedy completions of ``inputs`` (examples in the task's own format), each as the task describes it
    (``prediction``, and a text-to-text task's ``label``)."""
    examples = unlabelled(task, inputs)
    prompts = task.prompt_ids(examples, tokenizer, max_length, max_new_tokens)
    texts = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    return [task.describe(ex, text) for ex, text in zip(examples, texts)]
