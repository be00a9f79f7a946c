"""The recipe's Trainer: at each epoch's evaluation it scores an extra eval set (the test set) only when asked, and
its checkpoints hold only the parameters that train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from accelerate.utils import broadcast_object_list
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from ..errors import AdaprefixError

#: A checkpoint's weights when the backbone is frozen: the trainable parameters alone (adapter and task head).
TRAINABLE_WEIGHTS = "trainable.safetensors"


class CheckpointError(AdaprefixError, ValueError):
    """A checkpoint's trainable weights do not match the model being resumed."""


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

    # A checkpoint of a frozen backbone need not copy it: the Trainer would write the whole model every epoch
    # (SmolLM2-135M: 517 MB, where its adapter and optimiser state are a few MB), and a 7B backbone 28 GB.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the trainable parameters only (``trainable.safetensors``) when some parameters are frozen. Full
        fine-tuning, and the paths that gather a state dict themselves (DeepSpeed, FSDP), save as the Trainer does."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        frozen = any(not p.requires_grad for p in model.parameters())
        if state_dict is not None or not frozen or not trainable:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        safetensors.torch.save_file({name: p.detach().cpu().contiguous() for name, p in trainable.items()},
                                    os.path.join(output_dir, TRAINABLE_WEIGHTS), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load a checkpoint's trainable parameters over the frozen model; a checkpoint with the whole model (an
        older adaprefix's, or full fine-tuning's) loads as the Trainer loads it."""
        path = Path(resume_from_checkpoint) / TRAINABLE_WEIGHTS
        if not path.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        saved = safetensors.torch.load_file(str(path), device="cpu")
        trainable = {name for name, p in target.named_parameters() if p.requires_grad}
        if set(saved) != trainable:
            missing, extra = sorted(trainable - set(saved)), sorted(set(saved) - trainable)
            raise CheckpointError(f"{path}: expected the model's {len(trainable)} trainable parameters, got "
                                  f"{len(saved)}; missing {missing[:5]}, not in the model's trainable set {extra[:5]}")
        target.load_state_dict(saved, strict=False)
