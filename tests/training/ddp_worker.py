"""Run by test_ddp.py under torchrun: one short training per rank, then each rank writes what it ended with."""

import json
import os
import sys

import torch
from transformers import TrainerCallback

from adaprefix.training import load_train_config, train


class RecordFinalState(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = {n: p.detach().double().sum().item() for n, p in model.named_parameters() if p.requires_grad}
        record = {"rank": int(os.environ["RANK"]), "world_size": torch.distributed.get_world_size(),
                  "backend": torch.distributed.get_backend(), "global_step": state.global_step, "params": params}
        with open(self.path, "w") as handle:
            json.dump(record, handle)


if __name__ == "__main__":
    settings, out = json.loads(sys.argv[1]), sys.argv[2]
    if sys.argv[3:] == ["rank1-never-wants-test"] and os.environ["RANK"] == "1":
        # A rank whose own view of the best epoch is stale (e.g. read before rank 0 restored a checkpoint's
        # records): only the main process's decision may count, or the ranks join different evaluations.
        from adaprefix.training.callbacks import EpochRecorder

        EpochRecorder.wants = lambda self, name: name != "test"
    train(load_train_config(None, settings), extra_callbacks=[RecordFinalState(f"{out}/rank{os.environ['RANK']}.json")])
