"""benchmarks/decoder/run.py runs end to end (--dry-run: a tiny random decoder, made-up CB data) and writes its JSON,
with run metadata and every method's epoch records, and the markdown table."""

import json
from pathlib import Path

from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decoder" / "run.py"


def test_decoder_benchmark_dry_run_writes_json_and_table(tmp_path):
    bench = load_script(SCRIPT, "decoder_bench")
    bench.main(["--dry-run", "--out", str(tmp_path), "--epochs", "1", "--prefix-length", "4"])
    result = json.loads((tmp_path / "cb-t2t.json").read_text())
    assert list(result["runs"]) == ["pt2", "apt", "lora"]
    assert {"command", "commit", "date", "torch", "transformers", "peft"} <= set(result["metadata"])
    for run in result["runs"].values():
        assert len(run["epochs"]) == 1 and run["best_epoch"] == 1 and run["train_examples"] == 4
        assert {"accuracy", "invalid", "completion_loss", "perplexity"} <= set(run["dev"])
        assert 0 < run["trainable_parameters"] < run["total_parameters"]
    # LoRA r=8 on q_proj (32 -> 32) and v_proj (32 -> 16: 2 of 4 heads' width) in 2 layers: 8 * (64 + 48) * 2.
    assert result["runs"]["lora"]["trainable_parameters"] == 8 * (32 + 32 + 32 + 16) * 2
    table = (tmp_path / "cb-t2t.md").read_text()
    assert all(f"| {method} |" in table for method in ("pt2", "apt", "lora"))


def test_a_peft_run_resumes_from_its_last_epoch_checkpoint(tmp_path):
    """The grid's PEFT arms keep a checkpoint per epoch, so a sitting that ends mid-run loses at most an epoch."""
    import argparse

    bench = load_script(SCRIPT, "decoder_bench")
    model, data = bench.dry_run_inputs(tmp_path / "inputs")
    out = tmp_path / "lora"
    args = argparse.Namespace(task="cb-t2t", epochs=1, batch_size=2, eval_batch_size=4, max_length=64, seed=1,
                              max_train_samples=None, max_eval_samples=None)
    first = bench.train_peft(args, "lora", 1e-3, model, str(data), out, resume=True)  # nothing to resume: a fresh run
    assert [e["epoch"] for e in first["epochs"]] == [1] and (out / "checkpoints" / "checkpoint-2").is_dir()
    args.epochs = 2  # the same run, given one more epoch: it continues from checkpoint-2
    second = bench.train_peft(args, "lora", 1e-3, model, str(data), out, resume=True)
    assert [e["epoch"] for e in second["epochs"]] == [1, 2] and [e["step"] for e in second["epochs"]] == [2, 4]
    assert second["epochs"][0] == first["epochs"][0]
    # its time counts both sittings: the first's, up to the epoch resumed from, and all of this one's
    assert second["train_seconds"] >= first["epochs"][0]["elapsed_seconds"] + second["sitting_seconds"] - 0.05
    third = bench.train_peft(args, "lora", 1e-3, model, str(data), out, resume=False)  # asked afresh: starts over
    assert [e["epoch"] for e in third["epochs"]] == [1, 2]


def test_vouching_measures_drift_with_the_positions_generation_uses(monkeypatch):
    """vouching.py's drift compares the loss pass's right-padded rows with left-padded prompts numbered as
    generate() numbers them: on a tiny Llama with a prefix it is float rounding, not a shift of rotary positions
    (which a prefix, unrotated by the queries' shift, does see)."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from decoder_helpers import tiny_llama

    vouching = load_script(SCRIPT.parent / "vouching.py", "vouching")

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    from adaprefix import AdaptivePrefixConfig, attach

    model = attach(tiny_llama(20), AdaptivePrefixConfig(method="pt2", prefix_length=2, prefix_init_std=1.0)).eval()
    prompts = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 9, 8, 7]]
    def greedy(ids, n):  # by hand, without a cache: the references are generation's own path, so every step counts
        with torch.no_grad():
            for _ in range(n):
                ids = ids + [int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())]
        return ids[-n:]

    references = [greedy(p, 3) for p in prompts]
    rows = [{"input_ids": p + r, "attention_mask": [1] * (len(p) + 3), "labels": [-100] * len(p) + r}
            for p, r in zip(prompts, references)]
    compared = []
    original = torch.Tensor.abs
    monkeypatch.setattr(torch.Tensor, "abs", lambda t: compared.append(t.shape) or original(t))
    drift = vouching.logit_drift(model, Tok(), rows, prompts, batch_size=3, max_new_tokens=3)
    monkeypatch.undo()
    assert 0 <= drift < 1e-4 and len(compared) == 9  # 3 prompts x 3 steps (prefill, then two cached steps)
    with torch.no_grad():  # the same prompts left-padded without position ids: far apart, so the check has teeth
        shifted = model(input_ids=torch.tensor([[0, 0, 0, 0, 1, 5]]), attention_mask=torch.tensor([[0] * 4 + [1] * 2]))
        plain = model(input_ids=torch.tensor([[1, 5]]))
    assert (shifted.logits[0, -1] - plain.logits[0, -1]).abs().max() > 1e-3
