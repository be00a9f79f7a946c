"""The recipe's Trainer: at each epoch's evaluation it scores an extra eval set (the test set) only when asked."""

from __future__ import annotations

from typing import Callable

from accelerate.utils import broadcast_object_list
from transformers import Trainer


class SelectiveEvalTrainer(Trainer):
    """A Trainer whose epoch evaluation goes through its eval sets in order and skips a set when ``wants(name)`` is
    false at its turn, telling ``on_skip(name)``.

    The recipe reports test metrics at the best dev epoch only, so an epoch whose dev metric does not improve has no
    use for the test set; on CoNLL-2003 scoring it costs as much as scoring dev. In a distributed run the main
    process decides for all: every process must join the same evaluations. An explicit ``evaluate(dataset)``
    scores what it is given.
    """

    def __init__(self, *args, wants: Callable[[str], bool] | None = None,
                 on_skip: Callable[[str], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.wants = wants
        self.on_skip = on_skip

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if eval_dataset is not None or not isinstance(self.eval_dataset, dict) or self.wants is None:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        metrics: dict[str, float] = {}
        for name in self.eval_dataset:
            if self._main_process_decides(self.wants(name)):  # asked after the sets before it have reported
                metrics.update(super().evaluate(name, ignore_keys=ignore_keys,
                                                metric_key_prefix=f"{metric_key_prefix}_{name}"))
            elif self.on_skip is not None:
                self.on_skip(name)
        return metrics

    def _main_process_decides(self, decision: bool) -> bool:
        if self.args.world_size <= 1:
            return decision
        return bool(broadcast_object_list([decision], from_process=0)[0])
