"""Task/data layer: load, validate, format, tokenize, collate and score SuperGLUE, NER and custom data.

Typical use::

    task = get_task("rte")
    train = task.encode(task.load("train", data_dir), tokenizer, max_length=128)
    model = task.auto_model_class().from_pretrained(name, num_labels=task.num_labels)
    Trainer(..., train_dataset=train.dataset, data_collator=task.collator(tokenizer),
            compute_metrics=task.compute_metrics)
"""

from .base import KINDS, EncodedSplit, Task, canonical_split
from .collators import MultipleChoiceCollator
from .conll import ConllFormat, read_conll
from .custom import CustomSequenceTask, CustomTokenTask, custom_task
from .data_dir import ENV_VAR, data_dir_candidates, find_data_file, resolve_data_dir
from .errors import DataError, TokenizerError, UnknownTaskError
from .formats import FORMAT_CHOICES, FORMATS, detect_format
from .kinds import (BYTE_LEVEL_BPE, MultipleChoiceTask, SequenceClassificationTask,
                    TokenClassificationTask)
from .ner import CoNLL03, CoNLL04, ConllTask, OntoNotes
from .readers import TSV_QUOTING
from .registry import ALIASES, TASKS, TaskInfo, describe_tasks, get_task
from .sampling import sample_examples
from .superglue import CB, COPA, RTE, WSC, BoolQ, SuperGlueTask, WiC

__all__ = [
    "ALIASES", "BYTE_LEVEL_BPE", "BoolQ", "CB", "COPA", "CoNLL03", "CoNLL04", "ConllFormat", "ConllTask",
    "CustomSequenceTask", "CustomTokenTask", "DataError", "ENV_VAR", "EncodedSplit", "FORMATS", "FORMAT_CHOICES",
    "KINDS", "MultipleChoiceCollator", "MultipleChoiceTask", "OntoNotes", "RTE", "SequenceClassificationTask",
    "SuperGlueTask", "TASKS", "TSV_QUOTING", "Task", "TaskInfo", "TokenClassificationTask", "TokenizerError",
    "UnknownTaskError", "WSC", "WiC", "canonical_split", "custom_task", "data_dir_candidates", "describe_tasks",
    "detect_format", "find_data_file", "get_task", "read_conll", "resolve_data_dir", "sample_examples",
]
