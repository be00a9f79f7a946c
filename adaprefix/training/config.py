"""TrainConfig: a run's settings, from YAML and `--key value`.

Settings are given flat (``--prefix-length 8``, ``train_file: x.jsonl``) or in their sections (``adapter:``,
``custom:``); each key belongs to exactly one place: the run itself, the bring-your-own data (:class:`CustomData`)
or the adapter (:class:`~adaprefix.config.AdaptivePrefixConfig`). config.yaml in a run folder is the same format.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..backbones import PACKAGED, resolve_backbone
from ..config import METHOD_NOTES, METHODS, AdaptivePrefixConfig, ConfigError, choices_help
from ..errors import AdaprefixError
from ..tasks.formats import DATA_KINDS, FORMAT_CHOICES
from ..tasks.readers import TSV_QUOTING

#: Methods that attach no adapter: the run trains and saves a whole model (ft every weight, head the task head alone).
WHOLE_MODEL_METHODS = ("ft", "head")
TRAIN_METHODS = WHOLE_MODEL_METHODS + METHODS
TRAIN_METHOD_NOTES = {"ft": "full fine-tuning, no adapter",
                      "head": "the task head alone on the frozen backbone (a linear probe), no adapter: the floor an "
                              "adapter has to clear", **METHOD_NOTES}
SCHEDULES = ("auto", "linear", "exponential", "constant")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_MODEL = "minilm"  # the packaged all-MiniLM-L6-v2 (adaprefix.backbones.PACKAGED)


class TrainConfigError(AdaprefixError, ValueError):
    """A run setting is unknown or has the wrong type; the message names the key and where it came from."""


@dataclass
class CustomData:
    """Bring-your-own data (``task: custom``): the split files and how to read them."""

    train_file: str | None = field(default=None, metadata={"help": "custom task: training file (jsonl/csv/tsv for "
                                                           "classification or generation, CoNLL columns for "
                                                           "tagging)."})
    dev_file: str | None = field(default=None, metadata={"help": "custom task: dev file."})
    test_file: str | None = field(default=None, metadata={"help": "custom task: test file (optional)."})
    text_column: str = field(default="text", metadata={"help": "custom classification: text field."})
    text_pair_column: str | None = field(default=None, metadata={"help": "custom classification: second text."})
    label_column: str = field(default="label", metadata={"help": "custom classification: label field."})
    format: str = field(default="auto", metadata={
        "help": f"custom task: format of the files, one of {', '.join(FORMAT_CHOICES)}. auto: from the train file's "
                "content, then its extension (token<TAB>tag lines with O/IOB tags and blank lines between sentences "
                "are tagging data, whatever the extension); the run records the format used."})
    tsv_quoting: str = field(default="auto", metadata={
        "help": f"custom tsv files: how quote characters are read, one of {', '.join(TSV_QUOTING)}. none: plain text "
                "(GLUE's TSVs); csv: CSV quoting (a quoted cell may hold tabs); auto: none when every line has the "
                "header's number of tabs, else csv."})
    token_column: int = field(default=0, metadata={"help": "custom tagging: column of the token."})
    tag_column: int = field(default=-1, metadata={"help": "custom tagging: column of the tag."})
    prompt_column: str = field(default="prompt", metadata={
        "help": "custom generation (decoders): prompt field; the model learns to continue it with the completion."})
    completion_column: str = field(default="completion", metadata={
        "help": "custom generation: completion field (the loss counts its tokens and an appended EOS only; dev is "
                "scored by exact match of greedy generations)."})
    kind: str = field(default="auto", metadata={
        "help": f"custom task: what the files hold, one of {', '.join(DATA_KINDS)}. auto: tagging for CoNLL "
                "columns, generation when the train file's first record has the prompt and completion fields, "
                "classification otherwise; the run records the kind used."})

    def __post_init__(self) -> None:
        _check(self.format in FORMAT_CHOICES, "format", f"one of {', '.join(FORMAT_CHOICES)}", self.format)
        _check(self.kind in DATA_KINDS, "kind", f"one of {', '.join(DATA_KINDS)}", self.kind)
        _check(self.tsv_quoting in TSV_QUOTING, "tsv_quoting", f"one of {', '.join(TSV_QUOTING)}", self.tsv_quoting)


@dataclass
class TrainConfig:
    """Everything a run needs: run settings, then the ``custom`` data section and the ``adapter``.

    ``custom`` and ``adapter`` may be given as mappings of their fields; they are built (and validated) here, once.
    """

    task: str = field(default="cb", metadata={"help": "Task name (see `adaprefix tasks`) or 'custom'."})
    method: str = field(default="apt", metadata={"help": choices_help(TRAIN_METHODS, TRAIN_METHOD_NOTES) + "."})
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": f"a packaged backbone ({', '.join(PACKAGED)}; `adaprefix install NAME`), a .gguf file (converted "
                "once, cached), a local path or a hub name."})
    data_dir: str | None = field(default=None, metadata={"help": "Task data folder; default $ADAPREFIX_DATA_DIR "
                                                         "or ../shared/data."})
    output_dir: str | None = field(default=None, metadata={"help": "Run folder; default runs/<task>-<method>-s<seed>."})
    epochs: int = field(default=12, metadata={"help": "Training epochs; dev is evaluated after each."})
    batch_size: int = field(default=16, metadata={"help": "Per-device training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Per-device evaluation batch size."})
    test_every_epoch: bool = field(default=False, metadata={
        "help": "Score the test split (NER, or your own data's test_file) after every epoch. By default it is "
                "scored only at epochs whose dev metric improves: the test number reported is the one at the best "
                "dev epoch either way."})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the prefix and gates (ft: of the whole model). Default 1e-2, ft 2e-5."})
    head_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the task head; default: learning_rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    lr_schedule: str = field(default="auto", metadata={
        "help": "linear (decay to 0), exponential (x exp_decay per epoch), constant; auto: linear for SuperGLUE "
                "and custom classification, exponential for NER (the P-tuning v2 protocol)."})
    exp_decay: float = field(default=0.95, metadata={"help": "Per-epoch factor of the exponential schedule."})
    max_length: int | None = field(default=None, metadata={
        "help": "Longer inputs are truncated (and counted). Default: the task's, 128 for SuperGLUE and "
                "classification, 256 for generation (prompt + completion), the tokenizer's limit for NER (as "
                "P-tuning v2). With shift_positions it is capped "
                "so that prefix + input fit the position table."})
    hidden_dropout: float | None = field(default=None, metadata={
        "help": "Override the backbone's hidden dropout (BERT's hidden_dropout_prob, DistilBERT's dropout, GPT-2's "
                "resid_pdrop, ...); it also reaches the head and, with prefix_dropout unset, the prefix "
                "(P-tuning v2's --hidden_dropout_prob). Default: the checkpoint's."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and dropout."})
    data_seed: int | None = field(default=None, metadata={
        "help": "Seed of the --max-train-samples subset; default: seed. The run records the value used."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16, "
                                                     "bf16."})
    max_train_samples: int | None = field(default=None, metadata={
        "help": "Train on N examples drawn at random with data_seed (kept in file order; the subsets of one seed are "
                "nested). final_metrics.json records train_examples and train_examples_full."})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "Use only the first N dev/test examples (the first, so every run is scored on the same ones)."})
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    custom: CustomData = field(default_factory=CustomData, metadata={
        "help": "Bring-your-own data (task custom): the files and how to read them. Given flat (--train-file ...) "
                "or as a `custom:` section."})
    adapter: AdaptivePrefixConfig | None = field(default=None, metadata={
        "help": "The adapter (AdaptivePrefixConfig, its method the run's); None for ft. Its fields are given flat "
                "(--prefix-length 8) or as an `adapter:` section."})

    def __post_init__(self) -> None:
        _check(self.method in TRAIN_METHODS, "method", f"one of {', '.join(TRAIN_METHODS)}", self.method)
        _check(self.lr_schedule in SCHEDULES, "lr_schedule", f"one of {', '.join(SCHEDULES)}", self.lr_schedule)
        _check(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}", self.precision)
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, "a positive integer or null (all examples)", value)
        for name in ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps"):
            _check(getattr(self, name) >= 1, name, "a positive integer", getattr(self, name))
        _check(self.max_length is None or self.max_length >= 1, "max_length", "a positive integer or null",
               self.max_length)
        _check(self.hidden_dropout is None or 0 <= self.hidden_dropout < 1, "hidden_dropout",
               "null or a value in [0, 1)", self.hidden_dropout)
        _check(0 < self.exp_decay <= 1, "exp_decay", "a value in (0, 1]", self.exp_decay)
        self.custom = _section(CustomData, self.custom, "custom")
        if self.task == "custom":
            _check(self.custom.train_file is not None, "train_file", "a path (task 'custom' reads your own files)",
                   None)
        self.adapter = self._adapter()

    def _adapter(self) -> AdaptivePrefixConfig | None:
        """The adapter of the run's method, built once from its fields; None for ft and head, which attach none."""
        if self.method in WHOLE_MODEL_METHODS:
            return None
        given = self.adapter
        if isinstance(given, AdaptivePrefixConfig) and given.method == self.method:
            return given
        fields_ = dataclasses.asdict(given) if isinstance(given, AdaptivePrefixConfig) else dict(given or {})
        try:
            return AdaptivePrefixConfig.from_dict({**fields_, "method": self.method}, source="adapter")
        except ConfigError as err:
            raise TrainConfigError(f"adapter: {err}") from err

    @property
    def resolved_data_seed(self) -> int:
        """The seed of the training subset: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def resolved_learning_rate(self) -> float:
        """``learning_rate``, else the method's default (2e-5 for full fine-tuning, 1e-2 for an adapter or the head
        alone)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-5 if self.method == "ft" else 1e-2

    def model_path(self) -> str:
        """Where the backbone is loaded from: a packaged backbone's folder (``minilm``, ``mpnet``, ...), the cached
        conversion of a ``.gguf`` file, or ``model`` as given (see :func:`adaprefix.backbones.resolve_backbone`)."""
        return resolve_backbone(self.model)

    def run_dir(self) -> Path:
        """The run folder: ``output_dir``, else ``runs/<task>-<method>-s<seed>``."""
        return Path(self.output_dir or f"runs/{self.task}-{self.method}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as config.yaml holds them: run settings, then the ``custom`` and ``adapter`` sections (the
        adapter without ``method``, which is the run's); :func:`load_train_config` reads them back."""
        data = dataclasses.asdict(self)
        if data["adapter"] is not None:
            del data["adapter"]["method"]
        return data


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise TrainConfigError(f"{key}: expected {expected}, got {got!r}")


def _section(cls: type, value: Any, name: str) -> Any:
    """A section (``custom``) as its dataclass, built from a mapping of its fields where given one."""
    if isinstance(value, cls):
        return value
    data = dict(value or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(f"{name}: unknown field(s) {', '.join(unknown)}; {name} fields: "
                               f"{', '.join(sorted(known))}")
    return cls(**data)


#: The sections of TrainConfig and the dataclass of each; every other TrainConfig field is a run setting.
SECTIONS: dict[str, type] = {"custom": CustomData, "adapter": AdaptivePrefixConfig}


def section_fields(section: str) -> list[dataclasses.Field]:
    """The settings of a section (the adapter's without ``method``, which is the run's)."""
    return [f for f in fields(SECTIONS[section]) if not (section == "adapter" and f.name == "method")]


def run_fields() -> list[dataclasses.Field]:
    """TrainConfig's own settings (not the sections)."""
    return [f for f in fields(TrainConfig) if f.name not in SECTIONS]


_SECTION_OF = {f.name: section for section in SECTIONS for f in section_fields(section)}
_RUN_FIELDS = {f.name for f in run_fields()}
_HINTS = {**typing.get_type_hints(AdaptivePrefixConfig), **typing.get_type_hints(CustomData),
          **typing.get_type_hints(TrainConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or fail naming key, expected and got."""
    hint = _HINTS[key]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if list[int] in allowed:  # per-layer lengths: a YAML list, or "4,8,0,12" on the command line
        if isinstance(value, str) and value.strip().lower() not in ("null", "none", "~"):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, list):
            try:
                return [int(v) if not isinstance(v, bool) and float(v) == int(float(v)) else _not_int(v)
                        for v in value]
            except (TypeError, ValueError):
                raise TrainConfigError(f"{source}: {key}: expected a list of integers (or 'a,b,c'), got "
                                       f"{value!r}") from None
    if isinstance(value, str):
        if str in allowed:  # a path or name like "2024_01" or "007" stays exactly as typed
            return None if value.strip().lower() in ("null", "none", "~") and type(None) in allowed else value
        value = _parse_scalar(value)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if typing.get_origin(kind) is typing.Literal and value in typing.get_args(kind):
            return value
    names = " or ".join(f"one of {', '.join(map(repr, typing.get_args(k)))}" if typing.get_origin(k) is typing.Literal
                        else getattr(k, "__name__", str(k)) for k in allowed)
    raise TrainConfigError(f"{source}: {key}: expected {names}, got {value!r}")


def _not_int(value: Any) -> int:
    raise ValueError(value)


def _parse_scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("null", "none", "~"):
        return None
    return text


def apply_settings(base: dict[str, Any], settings: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge settings into ``base`` (run settings, plus a mapping per section): flat keys go where they belong, and
    a section may also be given nested (``adapter: {...}``) or dotted (``adapter.prefix_length``)."""
    merged = {**base, **{name: dict(base.get(name) or {}) for name in SECTIONS}}
    for raw_key, value in settings.items():
        key = str(raw_key).replace("-", "_")
        section, _, sub = key.partition(".")
        if section in SECTIONS:
            nested = {sub: value} if sub else value
            if nested is None:  # `adapter: null`, as config.yaml of a full fine-tuning run holds
                continue
            if not isinstance(nested, dict):
                raise TrainConfigError(f"{source}: {section}: expected a mapping of {section} fields, got {value!r}")
            for sub_key, sub_value in nested.items():
                name = str(sub_key).replace("-", "_")
                if _SECTION_OF.get(name) != section:
                    known = sorted(f.name for f in section_fields(section))
                    where = "method and run settings go" if section == "adapter" else "run settings go"
                    raise TrainConfigError(f"{source}: {section}.{sub_key} is not {_article(section)} {section} field "
                                           f"({where} at the top level); {section} fields: {', '.join(known)}")
                merged[section][name] = _coerce(name, sub_value, source)
        elif key in _RUN_FIELDS:
            merged[key] = _coerce(key, value, source)
        elif key in _SECTION_OF:
            merged[_SECTION_OF[key]][key] = _coerce(key, value, source)
        else:
            known = sorted(_RUN_FIELDS | set(_SECTION_OF))
            raise TrainConfigError(f"{source}: unknown setting {raw_key!r}; known settings: {', '.join(known)}")
    return merged


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def load_train_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then overrides (e.g. from `--key value`)."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise TrainConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise TrainConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        settings = apply_settings(settings, loaded, str(path))
    settings = apply_settings(settings, overrides or {}, "command line")
    try:
        return TrainConfig(**settings)
    except TypeError as err:  # pragma: no cover - apply_settings already rejects unknown keys
        raise TrainConfigError(str(err)) from err
