"""benchmarks/decoder/grid.py end to end on a tiny random decoder and made-up CB data: the sweep's middle rates first,
one PEFT arm and one adaprefix arm trained, recorded, and not trained again."""

import importlib.util
import sys
import warnings
from pathlib import Path

import yaml

DECODER = Path(__file__).resolve().parents[2] / "benchmarks" / "decoder"


def _load(name, path, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


GRID = {
    "defaults": {"batch_size": 2, "eval_batch_size": 4, "max_length": 64, "prefix_length": 2,
                 "prefix_init_std": 0.02},
    "models": {"smollm2": {"path": "smollm2"}},
    "tasks": {"cb-t2t": {"epochs": 1, "init_text": "yes no maybe"}},
    "arms": {"lora": {"kind": "lora", "rates": [0.001, 0.002, 0.004]},
             "exact-text": {"kind": "prefix", "method": "apt", "gate_mode": "exact", "init_text": True,
                            "rates": [0.005, 0.01, 0.02]}},
    "experiments": [{"name": "sweep", "model": "smollm2", "tasks": ["cb-t2t"], "seeds": [1], "rates": "all"},
                    {"name": "seeds", "model": "smollm2", "tasks": ["cb-t2t"], "seeds": [2], "rates": "swept"}],
}


def test_the_grid_trains_the_middle_rates_first_records_them_and_skips_them_after(tmp_path, monkeypatch, capsys):
    run = _load("decoder_run_for_grid", DECODER / "run.py", monkeypatch)
    monkeypatch.setitem(sys.modules, "run", run)  # grid.py's `from run import ...`
    grid = _load("decoder_grid", DECODER / "grid.py", monkeypatch)
    model, data = run.dry_run_inputs(tmp_path / "inputs")
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    monkeypatch.setenv("ADAPREFIX_DATA_DIR", str(data))
    monkeypatch.setattr(grid, "GRID_FILE", tmp_path / "grid.yaml")
    monkeypatch.setattr(grid, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(grid, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(grid, "model_path", lambda name: model)

    capsys.readouterr()  # the inputs' own saving
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid.main(["--max-runs", "2"])
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # PEFT's, hushed
    printed = capsys.readouterr()
    # one line per epoch in the runner's log, from the PEFT arm and from adaprefix's own recipe alike
    assert (printed.out + printed.err).count("epoch 1/1 · dev accuracy") == 2
    assert "Writing model shards" not in printed.err and "Loading weights" not in printed.err
    records = grid.read_records()
    assert [(r["arm"], r["learning_rate"]) for r in records] == [("lora", 0.002), ("exact-text", 0.01)]
    for r in records:
        assert len(r["epochs"]) == 1 and r["best_epoch"] == 1 and 0.0 <= r["dev"]["accuracy"] <= 1.0
        assert {"commit", "command"} <= set(r["metadata"]) and r["trainable_parameters"] > 0
    config = yaml.safe_load((tmp_path / "runs" / records[1]["run_id"] / "config.yaml").read_text())
    assert config["adapter"]["gate_mode"] == "exact" and config["adapter"]["prefix_init_text"] == "yes no maybe"

    capsys.readouterr()
    grid.main(["--list"])
    listed = capsys.readouterr().out
    assert "recorded             sweep/smollm2/cb-t2t/lora-lr0.002-s1" in listed
    assert "to run               sweep/smollm2/cb-t2t/lora-lr0.001-s1" in listed
    assert "waits for its sweep  seeds/smollm2/cb-t2t/lora-lr?-s2" in listed  # no rate until the sweep chooses
