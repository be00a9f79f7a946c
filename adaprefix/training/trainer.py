"""The recipe's Trainer: at each epoch's evaluation it scores an extra eval set (the test set) only when asked."""

from __future__ import annotations

from typing import Callable

from transformers import Trainer


class SelectiveEvalTrainer(Trainer):
    """A Trainer whose epoch evaluation goes through its eval sets in order and skips a set when ``wants(name)`` is
    false at its turn.

    The recipe reports test metrics at the best dev epoch only, so an epoch whose dev metric does not improve has no
    use for the test set; on CoNLL-2003 scoring it costs as much as scoring dev. An explicit
    ``evaluate(dataset)`` scores what it is given.
    """

    def __init__(self, *args, wants: Callable[[str], bool] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.wants = wants

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if eval_dataset is not None or not isinstance(self.eval_dataset, dict) or self.wants is None:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        metrics: dict[str, float] = {}
        for name in self.eval_dataset:
            if self.wants(name):  # asked after the sets before it have reported to the callbacks
                metrics.update(super().evaluate(name, ignore_keys=ignore_keys,
                                                metric_key_prefix=f"{metric_key_prefix}_{name}"))
        return metrics
