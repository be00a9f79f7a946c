"""AdaptivePrefixConfig: every choice of the method, documented, validated, and saved with the adapter."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .errors import AdaprefixError

METHODS = ("apt", "pt2", "token-gate", "layer-gate")
POOLINGS = ("auto", "mean", "cls", "token")
GATE_MODES = ("scale", "exact", "separate")
#: What each gate mode does, for help texts (one entry per mode in GATE_MODES).
GATE_MODE_NOTES = {"scale": "the paper's: the gate scales the pseudo token's key and value",
                   "exact": "the gate weighs the pseudo token's attention weight; 0 removes it exactly",
                   "separate": "the prefix gets its own softmax, added times lambda, as in LLaMA-Adapter"}
#: Gate modes whose layer gate starts at 0, so that the adapter starts at the frozen model.
FROZEN_START_MODES = ("exact", "separate")
#: What each method attaches, for help texts (one entry per method in METHODS).
METHOD_NOTES = {"apt": "both gates, the paper's method", "pt2": "P-tuning v2, no gates",
                "token-gate": "token gate only, an ablation", "layer-gate": "layer gate only, an ablation"}


def choices_help(choices: tuple[str, ...], notes: dict[str, str]) -> str:
    """``"a (note), b (note) or c (note)"``: the choices in order, each with its note."""
    described = [f"{choice} ({notes[choice]})" for choice in choices]
    return ", ".join(described[:-1]) + " or " + described[-1] if len(described) > 1 else "".join(described)


class ConfigError(AdaprefixError, ValueError):
    """A config field holds a value the method cannot use; the message names the field, what it expects and got."""


def _refuse(field: str, expected: str, got: Any) -> None:
    raise ConfigError(f"{field}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not a length


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class AdaptivePrefixConfig:
    """How prefixes and gates are attached to a frozen Transformers model.

    Methods share one code path and differ only in which gates exist:

    - ``apt``: prefix on every layer, scaled by a token-level gate and a layer-level scalar (the paper).
    - ``pt2``: P-tuning v2, the prefix alone.
    - ``token-gate`` / ``layer-gate``: ablations with one gate only.
    """

    method: Literal[METHODS] = field(default="apt", metadata={"help": choices_help(METHODS, METHOD_NOTES) + "."})
    prefix_length: int = field(default=16, metadata={"help": "Pseudo tokens l prepended to every layer's keys/values."})
    prefix_lengths: list[int] | None = field(
        default=None,
        metadata={"help": "Per-layer prefix lengths, one per layer (PT-2*: see adaprefix.analysis.layer_lengths); a "
                  "layer with 0 has no prefix. Overrides prefix_length, which becomes the longest layer's. Not "
                  "with prefix_projection. None: prefix_length in every layer."},
    )
    prefix_projection: bool = field(
        default=False,
        metadata={"help": "Reparameterise the prefix with an MLP (embedding -> Linear -> tanh -> Linear), as in "
                  "P-tuning v2's optional prefix projection. Off by default (P-tuning v2's default)."},
    )
    projection_hidden_size: int = field(
        default=512, metadata={"help": "Hidden width r of the reparameterisation MLP (P-tuning v2 default 512)."}
    )
    prefix_dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on the prefix keys/values while training. None: the backbone's hidden dropout "
                  "(P-tuning v2's behaviour; resolved and recorded at attach). 0 disables it (PEFT's behaviour)."},
    )
    prefix_init_std: float = field(
        default=1.0,
        metadata={"help": "Std of the normal init of the prefix (or of its embedding when reparameterised). 0.02 is "
                  "what P-tuning v2 ran with (from_pretrained re-initialises its missing prefix embedding with the "
                  "backbone's initializer_range); 1.0 is nn.Embedding's default, which PEFT keeps, and the default here: "
                  "without the shift it reached a lower training loss and a higher dev accuracy than 0.02 on CB, for pt2 "
                  "and apt alike (3 seeds; benchmarks/reproduce, parity)."},
    )
    projection_init_std: float | None = field(
        default=0.02,
        metadata={"help": "Std of the normal init of the reparameterisation MLP's weights, biases at 0, as P-tuning "
                  "v2 ran (the backbone's initializer_range). None: torch's default Linear init (PEFT)."},
    )
    shift_positions: bool = field(
        default=False,
        metadata={"help": "Shift real tokens' position ids by prefix_length, reproducing P-tuning v2 (which fed the "
                  "prefix as past key values). Off (the default): keep pretrained positions and the whole position range; "
                  "on CB the shift helped neither pt2 nor apt (3 seeds; benchmarks/reproduce, parity). Encoders only."},
    )
    gate_pooling: Literal[POOLINGS] = field(
        default="auto",
        metadata={"help": "What the token gate reads from h_{i-1}: masked mean over real tokens ('mean'), the first "
                  "token ('cls'), or each query's own state ('token': one gate per query position, causal-safe). "
                  "'auto': mean for encoders, token for decoders."},
    )
    token_gate_weight_std: float = field(
        default=0.02,
        metadata={"help": "Std of the normal init of the token-gate weight W_i (d x l). 0 gives an input-independent "
                  "gate at start."},
    )
    token_gate_bias_init: float = field(
        default=0.0,
        metadata={"help": "Initial bias b_i of the token gate: alpha starts near sigmoid(b). 0 -> 0.5; large values "
                  "start from plain P-tuning v2 but saturate the sigmoid."},
    )
    layer_gate_init: float | None = field(
        default=None,
        metadata={"help": "Initial layer-level scalar lambda_i (unconstrained, as in the paper). None: 1.0 with "
                  "gate_mode 'scale' (start from the ungated prefix), 0.0 with 'exact' and 'separate' (start at the "
                  "frozen model)."},
    )
    gate_mode: Literal[GATE_MODES] = field(
        default="scale",
        metadata={"help": "How the gate g = lambda_i * alpha_ij acts on pseudo token j: " + choices_help(
            GATE_MODES, GATE_MODE_NOTES) + ". 'exact' gives the token the unnormalised attention weight "
            "g * exp(q.k_j / sqrt(d)) and leaves its value unscaled, so g = 1 is pt2 and g = 0 is the frozen "
            "model; it uses |lambda| (the weight must not be negative). 'separate' attends to the prefix apart "
            "from the real tokens, in a softmax of its own where token j weighs alpha_j * exp(q.k_j / sqrt(d)), and "
            "adds that output times lambda (unconstrained) to the real tokens' attention, which is the frozen "
            "model's; it needs the layer gate (method apt or layer-gate). Both start lambda at 0 unless "
            "layer_gate_init says otherwise. Not for pt2, which has no gate."},
    )
    prefix_init_text: str | None = field(
        default=None,
        metadata={"help": "Record of the text whose keys and values the prefix was initialised from "
                  "(adaprefix.init_prefix_from_text, or the training config's prefix_init_text); None: random init. "
                  "Set by that function, not read by attach."},
    )
    train_head: bool | None = field(
        default=None,
        metadata={"help": "Train the task head (parameters outside the backbone). None: yes, except output "
                  "embeddings of language-model heads, which are tied to the frozen input embeddings."},
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _refuse("method", f"one of {', '.join(METHODS)}", self.method)
        if self.gate_pooling not in POOLINGS:
            _refuse("gate_pooling", f"one of {', '.join(POOLINGS)}", self.gate_pooling)
        if self.prefix_lengths is not None:
            lengths = self.prefix_lengths
            if (not isinstance(lengths, (list, tuple)) or not lengths
                    or not all(_is_int(n) and n >= 0 for n in lengths) or max(lengths) < 1):
                _refuse("prefix_lengths", "one integer >= 0 per layer, at least one > 0", lengths)
            if self.prefix_projection:
                raise ConfigError("prefix_lengths: per-layer lengths and prefix_projection cannot be combined (the "
                                  "projection makes every layer's prefix from one shared embedding); turn one off")
            self.prefix_lengths = list(lengths)
            self.prefix_length = max(lengths)
        if not _is_int(self.prefix_length) or self.prefix_length < 1:
            _refuse("prefix_length", "a positive integer", self.prefix_length)
        if not isinstance(self.prefix_projection, bool):
            _refuse("prefix_projection", "true or false", self.prefix_projection)
        if not _is_int(self.projection_hidden_size) or self.projection_hidden_size < 1:
            _refuse("projection_hidden_size", "a positive integer", self.projection_hidden_size)
        if self.prefix_dropout is not None and not (_is_number(self.prefix_dropout) and 0 <= self.prefix_dropout < 1):
            _refuse("prefix_dropout", "None or a value in [0, 1)", self.prefix_dropout)
        if not _is_number(self.prefix_init_std) or self.prefix_init_std <= 0:
            _refuse("prefix_init_std", "a value > 0", self.prefix_init_std)
        if self.projection_init_std is not None and not (_is_number(self.projection_init_std)
                                                         and self.projection_init_std > 0):
            _refuse("projection_init_std", "None or a value > 0", self.projection_init_std)
        if not isinstance(self.shift_positions, bool):
            _refuse("shift_positions", "true or false", self.shift_positions)
        if not _is_number(self.token_gate_weight_std) or self.token_gate_weight_std < 0:
            _refuse("token_gate_weight_std", "a value >= 0", self.token_gate_weight_std)
        if self.gate_mode not in GATE_MODES:
            _refuse("gate_mode", f"one of {', '.join(GATE_MODES)}", self.gate_mode)
        if self.gate_mode == "exact" and not (self.use_token_gate or self.use_layer_gate):
            raise ConfigError(f"gate_mode: 'exact' weighs a gate, and method {self.method!r} has none; use "
                              "method 'apt' (or 'token-gate', 'layer-gate') with it, or gate_mode 'scale'")
        if self.gate_mode == "separate" and not self.use_layer_gate:
            raise ConfigError(f"gate_mode: 'separate' adds the prefix's attention times the layer gate lambda, and "
                              f"method {self.method!r} has none; use method 'apt' or 'layer-gate' with it")
        if self.layer_gate_init is None:
            self.layer_gate_init = 0.0 if self.gate_mode in FROZEN_START_MODES else 1.0
        for name in ("token_gate_bias_init", "layer_gate_init"):
            if not _is_number(getattr(self, name)):
                _refuse(name, "a number", getattr(self, name))
        if self.prefix_init_text is not None and not (isinstance(self.prefix_init_text, str)
                                                      and self.prefix_init_text.strip()):
            _refuse("prefix_init_text", "None or a non-empty text", self.prefix_init_text)
        if self.train_head is not None and not isinstance(self.train_head, bool):
            _refuse("train_head", "None, true or false", self.train_head)

    def layer_lengths(self, num_layers: int) -> list[int]:
        """Each layer's prefix length; refuses per-layer lengths given for another number of layers."""
        if self.prefix_lengths is None:
            return [self.prefix_length] * num_layers
        if len(self.prefix_lengths) != num_layers:
            raise ConfigError(f"prefix_lengths: expected one length per layer ({num_layers}), got "
                              f"{len(self.prefix_lengths)}")
        return list(self.prefix_lengths)

    @property
    def use_token_gate(self) -> bool:
        """Whether the method has the token-level gate alpha."""
        return self.method in ("apt", "token-gate")

    @property
    def use_layer_gate(self) -> bool:
        """Whether the method has the layer-level scalar lambda."""
        return self.method in ("apt", "layer-gate")

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, as saved in ``adaprefix_config.json``; :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "AdaptivePrefixConfig":
        """Build a config from a dict, refusing unknown fields by name (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Help text of every field, for the CLI and the docs."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
