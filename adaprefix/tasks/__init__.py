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
from .custom_generation import CustomGenerationTask
from .data_dir import ENV_VAR, data_dir_candidates, find_data_file, resolve_data_dir
from .errors import DataError, TokenizerError, UnknownTaskError
from .formats import DATA_KINDS, FORMAT_CHOICES, FORMATS, detect_format
from .kinds import (BYTE_LEVEL_BPE, GenerationTask, MultipleChoiceTask, SequenceClassificationTask,
                    TokenClassificationTask, exact_match, normalize_answer)
from .ner import CoNLL03, CoNLL04, ConllTask, OntoNotes
from .readers import TSV_QUOTING
from .registry import ALIASES, TASKS, TaskInfo, describe_tasks, get_task
from .sampling import sample_examples
from .superglue import CB, COPA, RTE, WSC, BoolQ, SuperGlueTask, WiC
from .text2text import TEXT2TEXT_TASKS, Text2TextTask

__all__ = [
    "ALIASES", "BYTE_LEVEL_BPE", "BoolQ", "CB", "COPA", "CoNLL03", "CoNLL04", "ConllFormat", "ConllTask",
    "CustomGenerationTask", "CustomSequenceTask", "CustomTokenTask", "DATA_KINDS", "DataError", "ENV_VAR",
    "EncodedSplit", "FORMATS", "FORMAT_CHOICES", "GenerationTask", "KINDS", "MultipleChoiceCollator",
    "MultipleChoiceTask", "OntoNotes", "RTE", "SequenceClassificationTask", "SuperGlueTask", "TASKS",
    "TEXT2TEXT_TASKS", "TSV_QUOTING", "Task", "TaskInfo", "Text2TextTask", "TokenClassificationTask",
    "TokenizerError", "UnknownTaskError", "WSC", "WiC", "canonical_split", "custom_task", "data_dir_candidates",
    "describe_tasks", "detect_format", "exact_match", "find_data_file", "get_task", "normalize_answer",
    "read_conll", "resolve_data_dir", "sample_examples",
]
