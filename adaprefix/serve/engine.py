"""What ``adaprefix serve`` holds and computes: one backbone, one adapter per run folder, batches of mixed adapters.

The HTTP layer (:mod:`adaprefix.serve.app`) and the batching loop (:mod:`adaprefix.serve.batching`) call
:meth:`Engine.encode` per request and :meth:`Engine.run` per batch; nothing here knows about HTTP.

Runs of one task kind (say CB and RTE, both sequence classification) share one model object: each is a named
adapter on it and a batch mixing them is one forward (:mod:`adaprefix.multi`). Runs of another kind (NER's token
classification) need another head class, hence another model object; it is built around the *same* backbone
tensors (shared, not copied), so memory holds one backbone whatever the kinds.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..errors import AdaprefixError
from ..inject import load_adapter
from ..persistence import AdapterLoadError
from ..tasks import DataError, Task
from ..tasks.answers import answer, unlabelled, word_starts
from ..tasks.inputs import examples_from_records, input_view, parse_inputs
from ..tasks.kinds.generation import (CompletionCollator, cut_prompt, generate_completions, leading_specials,
                                      own_generation_config, prepare_tokenizer)
from ..training.build import build_model, build_task, resolve_max_length
from ..training.config import WHOLE_MODEL_METHODS, load_train_config
from ..training.display import library_output
from ..training.generation import read_generation_settings
from .decoding import LENGTH, Completion, RowSampler, RowState, RowWatcher, Sampling, Stream
from .settings import ServeError, Settings

GENERATION = "generation"  # the model group of decoder adapters (language-model adapters and generation runs)
UNBOUNDED = 10**9  # a max_length no input reaches: encode without truncation to see which inputs are over


class UnknownAdapterError(AdaprefixError, LookupError):
    """A request names an adapter the server does not hold."""


class InputError(AdaprefixError, ValueError):
    """A request's inputs do not fit its adapter's task (or are over-long under ``on_overflow='refuse'``);
    ``param`` names the request field at fault where one is."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code  # OpenAI's name for the error, for the OpenAI-compatible routes


@dataclass
class ServedAdapter:
    """One adapter the server answers for: from a run folder (``task`` set) or a language-model adapter
    (``task`` None, served by /v1/generate)."""

    name: str
    source: str  # the run folder, or the adapter folder
    group: str  # the model object it is loaded on
    method: str
    task: Task | None = None
    tokenizer: Any = None
    labels: list[str] = field(default_factory=list)
    max_length: int | None = None
    max_new_tokens: int | None = None  # a generation run's budget for /v1/predict, as `adaprefix predict` uses

    @property
    def generative(self) -> bool:
        """Served by generating: a language-model adapter or a run of a generation task."""
        return self.task is None or self.task.kind == "generation"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task.name if self.task else None,
                "kind": self.task.kind if self.task else "generation", "method": self.method,
                "labels": self.labels, "source": self.source}


@dataclass
class Row:
    """One input, encoded for its adapter: the features a forward takes, and what answering it needs."""

    adapter: str
    features: dict[str, Any]
    view: dict[str, Any]  # the input as `adaprefix predict` echoes it
    truncated: bool = False
    word_starts: list[bool] | None = None  # tagging: the sub-tokens that carry a word's tag
    example: dict[str, Any] | None = None  # a generation task's input, which its answer describes
    sampling: Sampling = field(default_factory=Sampling)  # a prompt's decoding (greedy unless asked)
    stream: Stream | None = None  # where a streamed prompt's text goes as it is generated
    cancelled: bool = False  # set when its client has gone away: a forward it is in ends it at the next token

    @property
    def key(self) -> str:
        return self.adapter

    @property
    def tokens(self) -> int:
        """Its length as encoded (a multiple-choice input: its longest choice's), for the per-request limit."""
        return _length(self.features["input_ids"])


@dataclass
class _Group:
    model: nn.Module
    tokenizer: Any
    generative: bool


def parse_run_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the folder's name)."""
    name, equals, path = spec.partition("=")
    if not equals:
        path = spec
        name = Path(spec.rstrip("/")).name
    return name, Path(path)


def _share_backbone(model: nn.Module, source: nn.Module) -> None:
    """Make ``model``'s backbone use ``source``'s tensors (the same storage, not a copy); shapes must be equal."""
    for (name, target), (_, origin) in zip(model.base_model.named_modules(), source.base_model.named_modules()):
        for kind in ("_parameters", "_buffers"):
            mine, theirs = getattr(target, kind), getattr(origin, kind)
            for key in list(mine):
                if mine[key] is not None and theirs.get(key) is not None and mine[key].shape == theirs[key].shape:
                    mine[key] = theirs[key]


class Engine:
    """One backbone and the adapters served on it; encodes inputs and runs batches (see the module docstring)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.adapters: dict[str, ServedAdapter] = {}
        self.groups: dict[str, _Group] = {}
        self.backbone: str | None = None  # the model path of the first run
        self.backbone_source: str | None = None
        self._tokenizers: dict[tuple[str, bool], Any] = {}  # (digest of the files, generative) -> tokenizer
        # Requests are encoded on several threads, and runs share tokenizers: a fast tokenizer whose truncation is
        # set by one thread while another encodes fails ("Already borrowed", huggingface/tokenizers#537).
        self._tokenizing = threading.Lock()

    # Loading ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_runs(cls, specs: Sequence[str], settings: Settings | None = None) -> "Engine":
        engine = cls(settings)
        for spec in specs:
            engine.add_run(*parse_run_spec(spec))
        return engine

    def add_run(self, name: str, run_dir: str | Path) -> ServedAdapter:
        """Serve the best adapter of a run folder written by ``adaprefix train`` under ``name``."""
        run = Path(run_dir)
        if name in self.adapters:
            raise ServeError(f"{run}: the adapter name {name!r} is taken by {self.adapters[name].source}; give "
                             "another with NAME=PATH")
        if not (run / "config.yaml").is_file():
            raise ServeError(f"{run}: not a run directory (no config.yaml); give the --output-dir of a train run")
        cfg = load_train_config(run / "config.yaml")
        if cfg.method in WHOLE_MODEL_METHODS:
            raise ServeError(f"{run}: a run of method {cfg.method} carries a whole model, not an adapter, so it "
                             "cannot share the backbone; serve prefix runs (apt, pt2, token-gate, layer-gate), or "
                             "this run alone with `adaprefix predict`")
        weights = run / "adapter"
        if not weights.is_dir():
            raise ServeError(f"{weights}: missing; the run has not finished an epoch yet")
        backbone = cfg.model_path()
        if self.backbone is None:
            self.backbone, self.backbone_source = backbone, str(run)
        elif _same_path(backbone) != _same_path(self.backbone):
            raise ServeError(f"{run}: trained on backbone {backbone!r}, but this server serves {self.backbone!r} "
                             f"(from {self.backbone_source}); one server holds one backbone: serve it from another")
        task = build_task(cfg)
        saved_labels = run / "labels.json"
        labels = json.loads(saved_labels.read_text()) if saved_labels.is_file() else task.labels_for(cfg.data_dir)
        generative = task.kind == "generation"
        tokenizer = self._tokenizer(run / "tokenizer", generative)
        group = GENERATION if generative else task.auto_model_class().__name__
        try:
            with library_output("normal"):
                if group not in self.groups:
                    model = build_model(cfg, task, labels, tokenizer, attach_adapter=False)
                    if self.groups:  # another head class around the backbone already in memory
                        _share_backbone(model, next(iter(self.groups.values())).model)
                    load_adapter(model, weights, adapter_name=name)
                    self.groups[group] = _Group(model.eval(), tokenizer, generative=generative)
                else:
                    self.groups[group].model.load_adapter(weights, adapter_name=name)
        except AdapterLoadError as err:
            raise ServeError(f"{run}: its adapter does not fit the served backbone: {err}") from err
        max_length = resolve_max_length(cfg, task, tokenizer)
        budget = None
        if generative:  # what `adaprefix predict` generates for this run
            budget = read_generation_settings(run).get("max_new_tokens") or task.max_new_tokens([], tokenizer)
        served = ServedAdapter(name, str(run), group, cfg.method, task, tokenizer, labels, max_length, budget)
        self.adapters[name] = served
        return served

    def _tokenizer(self, folder: Path, generative: bool) -> Any:
        """The tokenizer saved in ``folder``; runs whose tokenizer files are identical share one object (about
        10 MB each for MiniLM's: with 8 runs, most of what a server holds beyond its one backbone)."""
        from transformers import AutoTokenizer

        digest = hashlib.sha256()
        for file in sorted(f for f in folder.rglob("*") if f.is_file()):
            digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes() + b"\0")
        key = (digest.hexdigest(), generative)
        if key not in self._tokenizers:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            self._tokenizers[key] = prepare_tokenizer(tokenizer) if generative else tokenizer
        return self._tokenizers[key]

    def add_language_model_adapter(self, name: str, adapter_dir: str | Path, model: nn.Module | None = None,
                                   tokenizer: Any = None) -> ServedAdapter:
        """Serve a decoder language-model adapter (saved with ``save_adapter``) for /v1/generate. The first one
        brings its ``model`` (a causal LM, unadapted) and ``tokenizer``; later ones are loaded onto it."""
        group = GENERATION
        if group not in self.groups:
            if model is None or tokenizer is None:
                raise ServeError(f"{adapter_dir}: the first language-model adapter needs its model and tokenizer")
            load_adapter(model, adapter_dir, adapter_name=name)
            self.groups[group] = _Group(model.eval(), tokenizer, generative=True)
        else:
            self.groups[group].model.load_adapter(adapter_dir, adapter_name=name)
        method = self.groups[group].model.peft_config[name].method
        served = ServedAdapter(name, str(adapter_dir), group, method, tokenizer=self.groups[group].tokenizer)
        self.adapters[name] = served
        return served

    def adapter(self, name: str) -> ServedAdapter:
        if name not in self.adapters:
            raise UnknownAdapterError(f"no adapter named {name!r}; served: {', '.join(self.adapters) or 'none'}")
        return self.adapters[name]

    # Requests ---------------------------------------------------------------------------------------------------

    def encode(self, name: str, inputs: Sequence[Any]) -> list[Row]:
        """Inputs of a /v1/predict request as rows for ``name``'s task. Each input is an example in the task's own
        format (a JSON object, as ``adaprefix predict --file`` reads jsonl), or a text, or ``[text, text_pair]``."""
        served = self.adapter(name)
        if served.task is None:
            raise InputError(f"adapter {name!r} is a language-model adapter: POST /v1/generate")
        with self._tokenizing:
            return self._encode(served, inputs)

    def _encode(self, served: ServedAdapter, inputs: Sequence[Any]) -> list[Row]:
        name, task = served.name, served.task
        examples = _examples(task, inputs)
        if served.generative:
            return self._prompt_rows(served, unlabelled(task, examples))
        prepared = unlabelled(task, examples)
        limit = served.max_length
        encoded = task.encode(prepared, served.tokenizer, limit)  # over-long inputs cut as `adaprefix predict` cuts
        over = [i for i, cut in enumerate(encoded.truncated) if cut]
        if over and self.settings.on_overflow == "refuse":
            full = task.encode([prepared[i] for i in over], served.tokenizer, UNBOUNDED).rows
            details = ", ".join(f"inputs[{i}] ({_length(row['input_ids'])} tokens)" for i, row in zip(over, full))
            raise InputError(f"over the {limit}-token limit of adapter {name!r}: {details}; shorten them, or start "
                             "the server with --on-overflow truncate")
        result = []
        for i, (example, row, cut) in enumerate(zip(examples, encoded.rows, encoded.truncated)):
            labels = row.pop("labels", None)
            starts = word_starts(labels) if task.kind == "token-classification" else None
            if starts is not None and sum(starts) < len(example["tokens"]):
                _check_words_kept(served, example["tokens"], i)
            result.append(Row(name, row, input_view(example), truncated=cut, word_starts=starts))
        return result

    @torch.no_grad()
    def run(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        """Predictions for rows of one model group, in one forward whatever their adapters."""
        served = [self.adapters[row.adapter] for row in rows]
        group = self.groups[served[0].group]
        features = [row.features for row in rows]
        if served[0].task.kind == "multiple-choice":
            batch = served[0].task.collator(group.tokenizer)([dict(f, labels=0) for f in features])
            batch.pop("labels")
        else:
            batch = group.tokenizer.pad(features, padding=True, return_tensors="pt")
        device = next(group.model.parameters()).device
        logits = group.model(**{k: v.to(device) for k, v in batch.items()},
                             adapter_names=[row.adapter for row in rows]).logits.float().cpu()
        results = []
        for i, (row, adapter) in enumerate(zip(rows, served)):
            # Columns past this adapter's labels are -inf (a wider head shares the batch): cut them off.
            width = len(adapter.labels) if adapter.task.kind != "multiple-choice" else logits.shape[-1]
            logit = logits[i, : len(row.word_starts)] if row.word_starts is not None else logits[i]
            results.append({**row.view, **answer(adapter.task, adapter.labels, logit[..., :width], row.word_starts),
                            **({"truncated": True} if row.truncated else {})})
        return results

    def _prompt_rows(self, served: ServedAdapter, examples: list[dict[str, Any]]) -> list[Row]:
        """A generation task's inputs as prompts, cut as `adaprefix predict` cuts them to leave room for the
        generation."""
        task, tokenizer = served.task, served.tokenizer
        prompts = task.prompt_ids(examples, tokenizer, served.max_length, served.max_new_tokens)
        full = task.prompt_ids(examples, tokenizer, UNBOUNDED, served.max_new_tokens)
        over = [i for i, (cut, whole) in enumerate(zip(prompts, full)) if len(cut) < len(whole)]
        if over and self.settings.on_overflow == "refuse":
            room = max(served.max_length - served.max_new_tokens, served.max_length // 2, 1)
            details = ", ".join(f"inputs[{i}] ({len(full[i])} tokens)" for i in over)
            raise InputError(f"over the {room}-token prompt limit of adapter {served.name!r} ({served.max_length} "
                             f"tokens less the {served.max_new_tokens} it generates): {details}; shorten them, or "
                             "start the server with --on-overflow truncate")
        return [Row(served.name, {"input_ids": ids}, input_view(example), truncated=i in over, example=example)
                for i, (ids, example) in enumerate(zip(prompts, examples))]

    def prompts(self, name: str, texts: Sequence[str], max_new_tokens: int, fields: tuple[str, str, str] = (
            "adapter", "inputs", "max_new_tokens"), add_special_tokens: bool = True,
                on_overflow: str | None = None) -> list[Row]:
        """The prompts of a /v1/generate request as rows for ``name`` (a generative adapter), as given. A prompt
        that leaves no room for ``max_new_tokens`` within the model's positions is cut from its start (its leading
        special tokens kept) and flagged, or refused under ``on_overflow='refuse'``. ``fields`` are the request's
        names of the adapter, the prompts and the budget, for the errors (/v1/completions: model, prompt,
        max_tokens); ``add_special_tokens`` False for a prompt that holds them already (a chat template's);
        ``on_overflow`` overrides the server's setting."""
        served = self.adapter(name)
        adapter, prompts, budget = fields
        if not served.generative:
            raise InputError(f"adapter {name!r} serves task {served.task.name!r} ({served.task.kind}), not "
                             "generation: POST /v1/predict", param=adapter)
        with self._tokenizing:
            ids = served.tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
            lead = leading_specials(served.tokenizer) if add_special_tokens else 0
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:  # generate() has no last token to continue from
            raise InputError(f"{', '.join(f'{prompts}[{i}]' for i in empty)}: encodes to no tokens with adapter "
                             f"{name!r}'s tokenizer, so there is nothing to continue; send some text", param=prompts)
        limit = getattr(self.groups[GENERATION].model.config, "max_position_embeddings", None)
        over = []
        if limit is not None:
            room = limit - max_new_tokens
            if room < 1:
                raise InputError(f"{budget}: {max_new_tokens} leaves no room for a prompt within the "
                                 f"{limit} positions of adapter {name!r}'s model", param=budget)
            over = [i for i, row in enumerate(ids) if len(row) > room]
            if over and (on_overflow or self.settings.on_overflow) == "refuse":
                details = ", ".join(f"{prompts}[{i}] ({len(ids[i])} tokens)" for i in over)
                hint = "" if on_overflow else ", or start the server with --on-overflow truncate"
                raise InputError(f"over the {room}-token prompt limit of adapter {name!r} ({limit} positions less "
                                 f"the {max_new_tokens} new tokens): {details}; shorten them or ask for fewer new "
                                 f"tokens{hint}", param=prompts, code="context_length_exceeded")
            ids = [cut_prompt(row, room, lead) for row in ids]
        return [Row(name, {"input_ids": row}, {"prompt": text}, truncated=i in over)
                for i, (row, text) in enumerate(zip(ids, texts))]

    def generate(self, rows: Sequence[Row], max_new_tokens: int) -> list[str]:
        """Greedy completions of prompt rows, in one generate() call whatever their adapters."""
        group = self.groups[GENERATION]
        return generate_completions(group.model, group.tokenizer, [row.features["input_ids"] for row in rows],
                                    max_new_tokens, batch_size=len(rows), adapter_names=[row.adapter for row in rows])

    @torch.no_grad()
    def complete(self, rows: Sequence[Row], max_new_tokens: int) -> list[Completion]:
        """Completions of prompt rows in one generate() call whatever their adapters, each decoded as its
        ``sampling`` says (greedy rows exactly as :meth:`generate` gives them) and streamed where it has a
        ``stream``; see :mod:`.decoding`."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        group = self.groups[GENERATION]
        tokenizer, model = group.tokenizer, group.model
        eos = tokenizer.eos_token_id  # None: every prompt runs to its budget
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        prompts = [row.features["input_ids"] for row in rows]
        batch = CompletionCollator(pad, side="left")([{"input_ids": ids, "attention_mask": [1] * len(ids)}
                                                      for ids in prompts])
        device = next(model.parameters()).device
        states = [RowState(row.sampling, row.stream, lambda row=row: row.cancelled) for row in rows]
        width = batch["input_ids"].shape[1]
        watcher = RowWatcher(states, tokenizer, eos, width, max_new_tokens)
        extra = {}
        if not all(row.sampling.greedy for row in rows):
            extra["logits_processor"] = LogitsProcessorList([RowSampler([row.sampling for row in rows], device)])
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                                  pad_token_id=pad, use_cache=True)
        with own_generation_config(model):  # sampling is the rows' own (RowSampler), nothing the model's
            model.generate(**{k: v.to(device) for k, v in batch.items()}, generation_config=config,
                           stopping_criteria=StoppingCriteriaList([watcher]),
                           adapter_names=[row.adapter for row in rows], **extra)
        for state in states:
            if state.done is None:  # generate() stopped it first (its own length limit)
                watcher.finish(state, LENGTH)
        return [state.done for state in states]

    def run_generation(self, rows: Sequence[Row], max_new_tokens: int) -> list[dict[str, Any]]:
        """/v1/predict answers of a generation task's rows: each completion as `adaprefix predict` describes it."""
        texts = self.generate(rows, max_new_tokens)
        return [{**row.view, **self.adapters[row.adapter].task.describe(row.example, text),
                 **({"truncated": True} if row.truncated else {})} for row, text in zip(rows, texts)]


def _same_path(path: str) -> str:
    return os.path.realpath(path) if os.path.exists(path) else path


def _length(ids) -> int:
    """Tokens of an encoded input; a multiple-choice input is as long as its longest choice."""
    return max(len(choice) for choice in ids) if ids and isinstance(ids[0], list) else len(ids)


def _check_words_kept(served: ServedAdapter, words: list[str], index: int) -> None:
    """Refuse a tagging input with words that the tokenizer drops whole ("", spaces, zero-width or control
    characters): they would get no tag, and the answer would have fewer tags than words with nothing to say which
    are missing. (Fewer tags because the input was cut to max_length is flagged as truncated instead.)"""
    encoding = served.tokenizer([words], is_split_into_words=True, add_special_tokens=False)
    kept = set(encoding.word_ids(0))
    lost = [i for i in range(len(words)) if i not in kept]
    if lost:
        shown = ", ".join(f"tokens[{i}] ({ascii(words[i])})" for i in lost[:5]) + (" ..." if len(lost) > 5 else "")
        raise InputError(f"inputs[{index}]: {len(lost)} of its {len(words)} words have no sub-token in adapter "
                         f"{served.name!r}'s tokenizer, so they could get no tag: {shown}; drop them or replace "
                         "them with visible text")


def _examples(task: Task, inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Examples in the task's format from JSON inputs, checked by the code `adaprefix predict` reads its inputs with."""
    examples = []
    for i, item in enumerate(inputs):
        try:
            if isinstance(item, dict):
                examples += examples_from_records(task, [(None, item)], f"inputs[{i}]")
            elif isinstance(item, str):
                examples += parse_inputs(task, item)
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
                examples += parse_inputs(task, item[0], item[1])
            else:
                raise DataError(f"expected an object in the task's format, a text or [text, text_pair], got "
                                f"{json.dumps(item)[:80]}")
        except DataError as err:
            message = str(err)
            raise InputError(message if message.startswith(f"inputs[{i}]") else f"inputs[{i}]: {message}") from None
    return examples
