"""The three kinds of task: each turns examples into features, collates them and scores predictions."""

from .classification import SequenceClassificationTask
from .multiple_choice import MultipleChoiceTask
from .tagging import BYTE_LEVEL_BPE, TokenClassificationTask

__all__ = ["BYTE_LEVEL_BPE", "MultipleChoiceTask", "SequenceClassificationTask", "TokenClassificationTask"]
