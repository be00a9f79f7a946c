"""The kinds of task: each turns examples into features, collates them and scores predictions."""

from .classification import SequenceClassificationTask
from .generation import GenerationTask, exact_match, normalize_answer
from .multiple_choice import MultipleChoiceTask
from .tagging import BYTE_LEVEL_BPE, TokenClassificationTask

__all__ = ["BYTE_LEVEL_BPE", "GenerationTask", "MultipleChoiceTask", "SequenceClassificationTask",
           "TokenClassificationTask", "exact_match", "normalize_answer"]
