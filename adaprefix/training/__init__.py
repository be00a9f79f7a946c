"""Training and evaluation recipe on the stock transformers.Trainer."""

from .config import TrainConfig, TrainConfigError, load_train_config
from .recipe import RunResult, train
from .run_dir import RunBusyError, RunExistsError
from .runs import evaluate_run, load_run, predict

__all__ = ["RunBusyError", "RunExistsError", "RunResult", "TrainConfig", "TrainConfigError", "evaluate_run",
           "load_run", "load_train_config", "predict", "train"]
