"""Why a fresh prefix moves one decoder more than another: the share of attention mass its pseudo tokens take at init.

    python benchmarks/decoder/prefix_mass.py      # smollm2 and gemma3-270m; writes results/prefix_mass.json

A P-tuning v2 prefix (16 tokens, init std 0.02, seed 0) is attached to each grid model, and one eager-attention
forward over the first 16 dev examples of cb-t2t (init_loss.py's) returns the attention weights. The prefix's share,
for one query, is the softmax weight on the prefix columns; it is averaged over heads, then over every real
(unpadded) query, per layer. That share is what the real tokens' outputs lose at init (they are scaled by
1 - share), so it explains the completion losses of `init_loss.py`: SmolLM2's is moved far more than Gemma 3's.

Why the shares differ is read from the model without a prefix. A pseudo token whose key is 0 has logit 0 for every
query, so l of them take l / (l + Z) of a query's attention, Z being the sum of exp(logit) over the real keys the query
sees. Each attention call is routed through a probe (registered in transformers' attention and mask registries) that
computes every query's log Z over its allowed keys, its largest logit and the lengths of queries and keys in logit
units (|q| and |k| times the square root of the layer's scaling), then runs sdpa as usual. In the first layer the
zero-key share l / (l + Z) is what the attached prefix takes (its keys at std 0.02 give logits near 0); in later
layers the prefix has already changed the hidden states, so the two part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prefix_shares(attentions, attention_mask, prefix_length: int) -> list[float]:
    """Per layer, the mean share of attention on the prefix columns over heads and real queries. Each layer's
    attention is ``(batch, heads, queries, prefix + keys)``; the prefix columns come first."""
    real = attention_mask.bool()  # (B, T)
    shares = []
    for layer in attentions:
        prefix = layer.shape[-1] - layer.shape[-2]
        if prefix != prefix_length:
            raise ValueError(f"attention over {layer.shape[-1]} keys for {layer.shape[-2]} queries: expected "
                             f"{prefix_length} prefix columns, got {prefix}")
        per_query = layer[..., :prefix].sum(-1).mean(1)  # (B, T): summed over the prefix, averaged over heads
        shares.append(float(per_query[real].mean()))
    return shares


PROBE = "adaprefix_logit_probe"


def log_partition(query, key, scaling: float, keep):
    """Each query's log Z over the keys it may see: ``logsumexp_j(q . k_j * scaling)`` where ``keep`` is true.
    ``query`` is ``(B, H, Q, d)``, ``key`` ``(B, H_kv, K, d)`` (grouped heads are repeated), ``keep`` broadcasts to
    ``(B, H, Q, K)``. Returns ``(lse, largest logit)``, both ``(B, H, Q)``."""
    import torch

    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    logits = (query @ key.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~keep, float("-inf"))
    return torch.logsumexp(logits, dim=-1), logits.amax(dim=-1)


def zero_key_share(lse, prefix_length: int):
    """The attention share ``l / (l + Z)`` that ``l`` pseudo tokens with zero keys take from a query whose real keys
    sum to ``Z = exp(lse)``; written as a sigmoid so a large Z does not overflow."""
    import math

    import torch

    return torch.sigmoid(math.log(prefix_length) - lse)


def logit_probe(records: list):
    """An attention function that appends, per call, ``(lse, largest logit, |q| and |k| in logit units)`` to
    ``records`` and then runs transformers' sdpa. The mask it reads is sdpa's (true: the key is visible), or causal
    where transformers passes none."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def probe(module, query, key, value, attention_mask, scaling=None, **kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        if attention_mask is None:
            keep = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril(
                key.shape[-2] - query.shape[-2])
        elif attention_mask.dtype == torch.bool:
            keep = attention_mask[..., : key.shape[-2]]
        else:
            raise TypeError(f"the logit probe reads a boolean mask, got {attention_mask.dtype}")
        lse, largest = log_partition(query, key, scale, keep)
        records.append((lse, largest, query.norm(dim=-1) * scale ** 0.5, key.norm(dim=-1) * scale ** 0.5))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return probe


def real_logit_stats(model, batch, prefix_length: int) -> dict[str, list[float]]:
    """Per layer of ``model`` (no prefix attached), averaged over heads and real queries (keys: over real keys): the
    log partition of the real logits, the largest logit, the share l zero-key pseudo tokens would take, the lengths
    of queries and keys in logit units, and the spread of the key lengths (their std over their mean)."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    records: list = []
    AttentionInterface.register(PROBE, logit_probe(records))
    AttentionMaskInterface.register(PROBE, sdpa_mask)
    before = model.config._attn_implementation
    model.set_attn_implementation(PROBE)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        model.set_attn_implementation(before)
    real = batch["attention_mask"].bool()[:, None, :]  # (B, 1, T): over heads by broadcasting
    stats: dict[str, list[float]] = {"log_partition": [], "largest_logit": [], "zero_key_share": [],
                                     "query_length": [], "key_length": [], "key_length_spread": []}
    for lse, largest, query_length, key_length in records:
        per_query = real.expand_as(lse)
        stats["log_partition"].append(float(lse[per_query].mean()))
        stats["largest_logit"].append(float(largest[per_query].mean()))
        stats["zero_key_share"].append(float(zero_key_share(lse, prefix_length)[per_query].mean()))
        stats["query_length"].append(float(query_length[per_query].mean()))
        keys = key_length[real.expand_as(key_length)]
        stats["key_length"].append(float(keys.mean()))
        stats["key_length_spread"].append(float(keys.std() / keys.mean()))  # 0: every key has one length
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=("smollm2", "gemma3-270m"),
                        help="a grid model (repeatable; default: both)")
    parser.add_argument("--task", default="cb-t2t")
    parser.add_argument("--examples", type=int, default=16, help="the first dev examples (init_loss.py's 16)")
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prefix_mass.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    import torch
    from transformers import AutoModelForCausalLM

    from adaprefix import AdaptivePrefixConfig, attach
    from adaprefix.analysis.run_info import run_metadata
    from adaprefix.tasks import get_task
    from grid import model_path

    task = get_task(args.task)
    models = {}
    for name in args.model or ["smollm2", "gemma3-270m"]:
        path = model_path(name)
        tokenizer = task.load_tokenizer(path)
        examples = task.load("dev")[: args.examples]
        batch = task.collator(tokenizer)(list(task.encode(examples, tokenizer, args.max_length).dataset))
        batch.pop("labels")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        real = real_logit_stats(model, batch, args.prefix_length)
        torch.manual_seed(0)
        attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=args.prefix_length, prefix_init_std=0.02))
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        shares = prefix_shares(attentions, batch["attention_mask"], args.prefix_length)
        means = {key: statistics.mean(values) for key, values in real.items()}
        models[name] = {"mean_share": statistics.mean(shares), "max_share": max(shares), "per_layer": shares,
                        "without_prefix": {"mean": means, "per_layer": real}}
        print(f"{name}: a fresh prefix takes {100 * statistics.mean(shares):.1f}% of the attention on average "
              f"(most in one layer: {100 * max(shares):.1f}%); without it, log Z {means['log_partition']:.2f}, "
              f"largest logit {means['largest_logit']:.2f}, |q| {means['query_length']:.2f}, "
              f"|k| {means['key_length']:.2f} (logit units, spread {means['key_length_spread']:.3f}), zero keys would take "
              f"{100 * means['zero_key_share']:.1f}% (first layer: {100 * real['zero_key_share'][0]:.1f}% against "
              f"{100 * shares[0]:.1f}% taken)")
    result = {"task": args.task, "examples": args.examples, "prefix_length": args.prefix_length,
              "prefix": "pt2, init std 0.02, seed 0", "models": models, "metadata": run_metadata()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
