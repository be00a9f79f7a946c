"""Tiny random models for every supported architecture, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MPNetConfig,
    Qwen2Config,
    RobertaConfig,
    XLMRobertaConfig,
)

VOCAB = 96
_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)

CONFIGS = {
    "bert": lambda: BertConfig(**_ENCODER),
    "roberta": lambda: RobertaConfig(**_ENCODER, pad_token_id=1),
    "xlm-roberta": lambda: XLMRobertaConfig(**_ENCODER, pad_token_id=1),
    "electra": lambda: ElectraConfig(**_ENCODER, embedding_size=16),
    "distilbert": lambda: DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=48,
                                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0),
    "deberta-v2": lambda: DebertaV2Config(**_ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                          position_buckets=16, max_relative_positions=-1, pad_token_id=0),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128, resid_pdrop=0.0,
                               embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "llama": lambda: LlamaConfig(**_DECODER),
    "qwen2": lambda: Qwen2Config(**_DECODER),
    "mistral": lambda: MistralConfig(**_DECODER, sliding_window=None),
    # MPNet: a T5-style relative position bias added inside its own attention (positions count from pad + 1).
    "mpnet": lambda: MPNetConfig(**_ENCODER, relative_attention_num_buckets=32, pad_token_id=1),
    # Gemma 3: a window of 4 on the sliding layers (shorter than the test sequences, so the window acts), a global
    # layer between them, q/k norms, and query_pre_attn_scalar 16 != head_dim 8, so a wrong query scaling shows.
    "gemma3_text": lambda: Gemma3TextConfig(**_DECODER, head_dim=8, query_pre_attn_scalar=16, sliding_window=4,
                                            layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}
ENCODERS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "mpnet"]
DECODERS = ["gpt2", "llama", "qwen2", "mistral", "gemma3_text"]
# DeBERTa-v2 and MPNet have no sdpa path in transformers; their own patched attention is tested under eager only.
PATCHED = ["deberta-v2", "mpnet"]
ATTENTION = {name: (["eager"] if name in PATCHED else ["eager", "sdpa"]) for name in CONFIGS}
MATRIX = [(name, impl) for name in CONFIGS for impl in ATTENTION[name]]


def tiny_config(name: str, impl: str | None = None, **overrides):
    impl = impl or ATTENTION[name][-1]
    config = CONFIGS[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = impl
    return config


def tiny_model(name: str, impl: str | None = None, head: str | None = None, seed: int = 0, **overrides):
    """A tiny model: sequence classification for encoders, causal LM for decoders (unless ``head`` says)."""
    torch.manual_seed(seed)
    config = tiny_config(name, impl, **overrides)
    impl = config._attn_implementation
    head = head or ("causal-lm" if name in DECODERS else "seq-cls")
    if head == "seq-cls":
        config.num_labels = overrides.get("num_labels", 3)
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=impl)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=impl)
    return model.eval()


def tiny_batch(batch: int = 2, length: int = 9, seed: int = 1, pad_last: int = 3):
    """Random ids with the last example right-padded by ``pad_last`` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        mask[-1, length - pad_last:] = 0
    return ids, mask


def tiny_inputs(name: str) -> dict:
    """A batch of 2 for model ``name``: decoders unpadded, encoders with the last example right-padded by 3."""
    ids, mask = tiny_batch(pad_last=0 if name in DECODERS else 3)
    return dict(input_ids=ids, attention_mask=mask)


def logits_of(model, inputs: dict) -> torch.Tensor:
    """The model's logits for ``inputs``, without gradients."""
    with torch.no_grad():
        return model(**inputs).logits
