"""Why a fresh prefix moves one decoder more than another: the share of attention mass its pseudo tokens take at init.

    python benchmarks/decoder/prefix_mass.py      # smollm2 and gemma3-270m; writes results/prefix_mass.json

A P-tuning v2 prefix (16 tokens, init std 0.02, seed 0) is attached to each grid model, and one eager-attention
forward over the first 16 dev examples of cb-t2t (init_loss.py's) returns the attention weights. The prefix's share,
for one query, is the softmax weight on the prefix columns; it is averaged over heads, then over every real
(unpadded) query, per layer. That share is what the real tokens' outputs lose at init (they are scaled by
1 - share), so it explains the completion losses of `init_loss.py`: SmolLM2's is moved far more than Gemma 3's.
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
        torch.manual_seed(0)
        attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=args.prefix_length, prefix_init_std=0.02))
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        shares = prefix_shares(attentions, batch["attention_mask"], args.prefix_length)
        models[name] = {"mean_share": statistics.mean(shares), "max_share": max(shares), "per_layer": shares}
        print(f"{name}: a fresh prefix takes {100 * statistics.mean(shares):.1f}% of the attention on average "
              f"(most in one layer: {100 * max(shares):.1f}%)")
    result = {"task": args.task, "examples": args.examples, "prefix_length": args.prefix_length,
              "prefix": "pt2, init std 0.02, seed 0", "models": models, "metadata": run_metadata()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
