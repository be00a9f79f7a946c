"""One declarative table of architecture facts. Anything not listed gets a loud error naming what is supported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import AdaprefixError
from .deberta import patch_deberta_attention
from .mpnet import patch_mpnet_attention

SUPPORTED_ATTENTION = ("eager", "sdpa")
#: Where a config keeps its hidden dropout (BERT, DistilBERT, GPT-2, others), in the order they are looked for.
HIDDEN_DROPOUT_NAMES = ("hidden_dropout_prob", "dropout", "resid_pdrop", "hidden_dropout")


def hidden_dropout_name(config) -> str | None:
    """The name under which ``config`` keeps the backbone's hidden dropout; None if it has none."""
    return next((name for name in HIDDEN_DROPOUT_NAMES if hasattr(config, name)), None)


class UnsupportedModelError(AdaprefixError, ValueError):
    """The model's architecture or attention implementation is not one adaprefix knows how to inject into."""


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # dotted path, from the base model, to the ModuleList of transformer layers
    attention: str  # dotted path, from one layer, to the module whose forward runs self-attention
    causal: bool  # decoder-only language model: the gate must not see future tokens
    # The module bypasses AttentionInterface (DeBERTa, MPNet): this puts a prefix-aware forward on one instance of it.
    attention_patch: Callable[[nn.Module], None] | None = None
    unsupported_flags: tuple[str, ...] = ()  # config flags that route attention around the seam

    @property
    def patched_attention(self) -> bool:
        """Whether the attention runs its own patched forward (eager only) instead of the AttentionInterface seam."""
        return self.attention_patch is not None


def unpatch_attention(module: nn.Module) -> None:
    """Undo an ``attention_patch``: patches live on the instance, so removing it uncovers the class's forward."""
    if "forward" in module.__dict__:
        del module.forward


_BERT_LIKE = ArchSpec(layers="encoder.layer", attention="attention.self", causal=False)
_LLAMA_LIKE = ArchSpec(layers="layers", attention="self_attn", causal=True)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": ArchSpec(layers="transformer.layer", attention="attention", causal=False),
    "deberta-v2": ArchSpec(layers="encoder.layer", attention="attention.self", causal=False,
                           attention_patch=patch_deberta_attention),
    "mpnet": ArchSpec(layers="encoder.layer", attention="attention.attn", causal=False,
                      attention_patch=patch_mpnet_attention),
    # reorder_and_upcast_attn runs GPT-2's own upcast kernel only under the name "eager", never through the seam.
    "gpt2": ArchSpec(layers="h", attention="attn", causal=True, unsupported_flags=("reorder_and_upcast_attn",)),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    # Sliding-window and global layers both go through the seam: the host builds each layer's mask (window or
    # full), and the seam prepends prefix columns visible to every query (see docs/reference/models.md, Architectures).
    "gemma3_text": _LLAMA_LIKE,
}


@dataclass(frozen=True)
class BackboneShape:
    """The backbone facts an adapter's tensors depend on; saved with it and checked on load."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def _supported_list() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def resolve_arch(model: nn.Module) -> tuple[ArchSpec, BackboneShape, nn.ModuleList, bool]:
    """Look the model up in the table; return its spec, shape, layer list and whether it is causal."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"adaprefix does not support model_type {model_type!r} ({type(model).__name__}); "
            f"supported: {_supported_list()}"
        )
    impl = config._attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {impl!r} of {type(model).__name__} is not supported; load the model with "
            f"attn_implementation set to one of: {', '.join(SUPPORTED_ATTENTION)}"
        )
    spec = ARCHITECTURES[model_type]
    flags = [flag for flag in spec.unsupported_flags if getattr(config, flag, False)]
    if flags:
        raise UnsupportedModelError(f"{model_type} with {', '.join(f'{f}=True' for f in flags)} is not supported: "
                                    "set it to False before attaching")
    layers = model.base_model.get_submodule(spec.layers)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "attention_head_size", None)
    shape = BackboneShape(
        model_type=model_type,
        num_layers=len(layers),
        hidden_size=config.hidden_size,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim or config.hidden_size // heads,
    )
    causal = spec.causal or bool(getattr(config, "is_decoder", False))
    return spec, shape, layers, causal
