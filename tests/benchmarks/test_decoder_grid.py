"""benchmarks/decoder/grid.py end to end on a tiny random decoder and made-up CB data: the sweep's middle rates first,
one PEFT arm and one adaprefix arm trained, recorded, and not trained again."""

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
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
    assert "Loading weights" not in printed.err
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


def _sweep_record(arm, rate, accuracy, seed=1, failed=None):
    record = {"run_id": f"sweep/smollm2/cb-t2t/{arm}-lr{rate:g}-s{seed}", "experiment": "sweep", "model": "smollm2",
              "task": "cb-t2t", "arm": arm, "seed": seed, "learning_rate": rate}
    return {**record, "failed": failed, "epochs": []} if failed else {**record, "dev": {"accuracy": accuracy}}


def _edge_grid(rule):
    sweep = {**GRID["experiments"][0], **({"extend_at_edge": rule} if rule else {})}
    return {**GRID, "experiments": [sweep, GRID["experiments"][1]]}


def test_a_sweep_extends_past_its_edge_while_the_edge_wins_and_the_runs_go_right_after_it(monkeypatch):
    grid = _load("decoder_grid_edges", DECODER / "grid.py", monkeypatch)
    records = [_sweep_record("exact-text", rate, acc) for rate, acc in ((0.005, 0.5), (0.01, 0.6), (0.02, 0.7))]
    records += [_sweep_record("lora", rate, 0.5) for rate in (0.001, 0.002, 0.004)]  # a three-way tie: no edge
    two = _edge_grid({"factor": 2, "max": 2})
    assert grid.sweep_rates(two, "exact-text", records) == ([0.005, 0.01, 0.02, 0.04], False)
    ids = [run.run_id() for run in grid.planned(two, records)]
    assert ids[6] == "sweep/smollm2/cb-t2t/exact-text-lr0.04-s1" and ids[7].startswith("seeds/")
    assert grid.swept_rate(two, "exact-text", records) is None  # the seeds wait for it
    records.append(_sweep_record("exact-text", 0.04, 0.8))  # the new edge wins again: once more, at 0.08
    assert grid.sweep_rates(two, "exact-text", records) == ([0.005, 0.01, 0.02, 0.04, 0.08], False)
    one = _edge_grid({"factor": 2, "max": 1})
    assert grid.swept_rate(one, "exact-text", records) == 0.04  # at most one more: the sweep ends there
    records.append(_sweep_record("exact-text", 0.08, 0.0, failed="the training loss became nan at step 3"))
    assert grid.swept_rate(two, "exact-text", records) == 0.04  # a failed run ranks below every rate
    assert grid.swept_rate(two, "lora", records) == 0.001
    none = _edge_grid(None)  # no rule: the three rates, complete as they are
    assert grid.sweep_rates(none, "exact-text", records) == ([0.005, 0.01, 0.02], True)
    assert [run.run_id() for run in grid.planned(none, records)] == [run.run_id() for run in grid.expand(none)]
    with pytest.raises(SystemExit, match="extend_at_edge needs factor > 1"):
        grid.sweep_rates(_edge_grid({"factor": 1, "max": 1}), "exact-text", records)


def test_a_run_whose_loss_becomes_nan_is_recorded_as_failed_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    from adaprefix.training.callbacks import NonFiniteLossError

    run = _load("decoder_run_for_failures", DECODER / "run.py", monkeypatch)
    monkeypatch.setitem(sys.modules, "run", run)
    grid = _load("decoder_grid_failures", DECODER / "grid.py", monkeypatch)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    monkeypatch.setattr(grid, "GRID_FILE", tmp_path / "grid.yaml")
    monkeypatch.setattr(grid, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(grid, "RUNS", tmp_path / "runs")

    def train_run(grid_spec, planned_run):
        if planned_run.arm == "lora":
            folder = tmp_path / "runs" / planned_run.run_id()
            folder.mkdir(parents=True)
            (folder / "metrics.jsonl").write_text('{"epoch": 1, "dev_accuracy": 0.5}\n')
            raise NonFiniteLossError("the training loss became nan at step 40")
        return {"best_epoch": 1, "dev": {"accuracy": 0.5}, "epochs": [], "trainable_parameters": 1}

    monkeypatch.setattr(grid, "train_run", train_run)
    grid.main(["--max-runs", "2"])
    first, second = grid.read_records()
    assert first["arm"] == "lora" and first["failed"] == "the training loss became nan at step 40"
    assert first["epochs"] == [{"epoch": 1, "dev_accuracy": 0.5}] and "dev" not in first
    assert second["arm"] == "exact-text" and second["dev"] == {"accuracy": 0.5}
    assert "lora-lr0.002-s1: failed: the training loss became nan at step 40" in capsys.readouterr().out
