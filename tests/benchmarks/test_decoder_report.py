"""benchmarks/decoder/report.py on made-up records: the chosen rates, margins paired by task and seed, the moonshot's
verdict, and the learning-curve plot."""

import json
from pathlib import Path

import pytest

from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decoder" / "report.py"


@pytest.fixture(scope="module")
def report():
    return load_script(SCRIPT, "decoder_report")


def record(arm, rate, seed, accuracy, task="cb-t2t", experiment="sweep", model="smollm2"):
    epochs = [{"epoch": e, "step": 32 * e, "dev_accuracy": accuracy * e / 3} for e in (1, 2, 3)]
    return {"run_id": f"{experiment}/{model}/{task}/{arm}-lr{rate}-s{seed}", "experiment": experiment, "model": model,
            "task": task, "arm": arm, "seed": seed, "learning_rate": rate, "best_epoch": 3, "epochs": epochs,
            "dev": {"accuracy": accuracy, "invalid": 0.0, "completion_loss": 0.4}, "trainable_parameters": 10,
            "train_seconds": 60.0}


def rates_of(report, arm):
    return report.grid_arms()[arm]["rates"]  # grid.yaml's, low to high


def sweep(report, arm, accuracies):
    return [record(arm, rate, 1, acc) for rate, acc in zip(rates_of(report, arm), accuracies)]


def middle(report, arm):
    return rates_of(report, arm)[1]


def test_the_chosen_rate_is_the_best_seed1_sweep_run_and_ties_take_the_smaller(report):
    records = sweep(report, "exact", [0.70, 0.75, 0.75]) + sweep(report, "pt2", [0.60, 0.50, 0.55])
    records += sweep(report, "apt", [0.9, 0.9])
    # apt's sweep is incomplete; pt2's best is its lowest rate and beats the others, so it waits for 0.0025 first
    assert report.chosen_rates(records) == {"exact": 0.01}
    records.append(record("pt2", 0.0025, 1, 0.55))
    assert report.chosen_rates(records) == {"exact": 0.01, "pt2": 0.005}


def test_the_chosen_rate_reads_only_the_smollm2_cb_sweep_at_grid_rates(report):
    """As grid.py chooses: another model's or task's or seed's runs, or a rate grid.yaml does not list, neither
    complete a sweep nor win it."""
    records = sweep(report, "exact", [0.70, 0.75])
    records += [record("exact", 0.02, 1, 0.99, model="gemma3-270m"), record("exact", 0.02, 1, 0.99, task="rte-t2t"),
                record("exact", 0.02, 2, 0.99), record("exact", 0.04, 1, 0.99)]
    assert report.chosen_rates(records) == {}
    records.append(record("exact", 0.02, 1, 0.60))
    assert report.chosen_rates(records) == {"exact": 0.01}


def test_a_run_recorded_twice_is_refused_naming_the_lines(report, tmp_path):
    path = tmp_path / "runs.jsonl"
    lines = [json.dumps(r) for r in sweep(report, "exact", [0.70, 0.75, 0.75])]
    path.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(SystemExit, match=r"line 4: run 'sweep/smollm2/cb-t2t/exact-lr0.01-s1' is already recorded "
                                         r"on line 2"):
        report.read_records(path)


def _grid(report, exact, lora, pt2, adapter):
    """Seed-1 sweeps choosing the middle rate, then the other seeds on CB and RTE at it; each arm's accuracy per
    (task, seed) from the mapping given."""
    records = []
    for arm, by_key in (("exact", exact), ("lora", lora), ("pt2", pt2), ("llama-adapter", adapter)):
        records += sweep(report, arm, [0.0, by_key[("cb-t2t", 1)], 0.0])
        for (task, seed), acc in by_key.items():
            if (task, seed) != ("cb-t2t", 1):
                records.append(record(arm, middle(report, arm), seed, acc, task=task,
                                      experiment="seeds" if task == "cb-t2t" else "rte"))
    return records


KEYS = [("cb-t2t", 1), ("cb-t2t", 2), ("rte-t2t", 1), ("rte-t2t", 2)]
ALL_KEYS = {("smollm2", task, seed) for task in ("cb-t2t", "rte-t2t") for seed in (1, 2, 3)}  # grid.yaml's


def _by(values):
    return dict(zip(KEYS, values))


def test_margins_are_paired_by_task_and_seed(report):
    records = _grid(report, _by([0.70, 0.80, 0.60, 0.50]), _by([0.75, 0.70, 0.65, 0.60]), _by([0.5] * 4), _by([0.6] * 4))
    rates = report.chosen_rates(records)
    assert rates == {arm: middle(report, arm) for arm in ("exact", "lora", "pt2", "llama-adapter")}
    margins = report.paired_margins(records, rates, "exact", "lora")
    assert margins == pytest.approx([-5.0, 10.0, -5.0, -10.0])  # cb s1, cb s2, rte s1, rte s2
    table = "\n".join(report.summary_table([r for r in records if r["task"] == "cb-t2t"], rates))
    assert "| exact | 0.01 | 2 | 75.0 ± 7.1 | 0.0 | +2.5 (2) | 96 | 2 of 2 | 10 | 1 min |" in table


def test_the_summary_says_how_soon_and_how_late_the_runs_peaked(report):
    records = _grid(report, _by([0.70, 0.80, 0.60, 0.50]), _by([0.75] * 4), _by([0.5] * 4), _by([0.6] * 4))
    early = next(r for r in records if r["arm"] == "exact" and r["seed"] == 2)
    early["epochs"] = [{"epoch": e, "step": 32 * e, "dev_accuracy": a} for e, a in ((1, 0.8), (2, 0.6), (3, 0.7))]
    early["best_epoch"], early["train_seconds"] = 1, 300.0
    table = "\n".join(report.summary_table([r for r in records if r["task"] == "cb-t2t"], report.chosen_rates(records)))
    # seed 1 reaches 90% of its best at its third epoch (step 96), seed 2 at its first (32); only seed 1 peaked late
    assert "| exact | 0.01 | 2 | 75.0 ± 7.1 | 0.0 | +0.0 (2) | 64 | 1 of 2 | 10 | 3 min |" in table
    assert report.peaked_late(early) is False and report.peaked_late(early, last=3) is True


def test_a_sweep_won_at_its_edge_is_extended_once_and_a_rate_still_at_the_edge_is_marked(report):
    """grid.yaml's sweep has extend_at_edge {factor: 2, max: 1}: a best rate at the highest (lowest) of the three that
    beats the other two adds one run at twice (half) it; if that wins again, the sweep ends there all the same."""
    records = sweep(report, "exact", [0.70, 0.72, 0.75]) + sweep(report, "pt2", [0.75, 0.72, 0.70])
    records += sweep(report, "lora", [0.70, 0.75, 0.70]) + sweep(report, "apt", [0.75, 0.72, 0.75])
    assert report.chosen_rates(records) == {"lora": 0.0005, "apt": 0.005}  # apt's tie is not a win at an edge
    grid = report.decoder_grid
    loaded = grid.load_grid(grid.GRID_FILE)
    own = 3 * len(loaded["arms"])
    due = [(r.arm, r.learning_rate) for r in grid.planned(loaded, records) if r.experiment == "sweep"][own:]
    assert due == [("pt2", 0.0025), ("exact", 0.04)]  # the extensions, right after the sweep's own runs
    records += [record("exact", 0.04, 1, 0.80), record("pt2", 0.0025, 1, 0.74)]
    rates = report.chosen_rates(records)
    assert rates == {"lora": 0.0005, "apt": 0.005, "exact": 0.04, "pt2": 0.005}
    table = "\n".join(report.summary_table(records, rates))
    assert "| exact | 0.04 (highest swept) | 1 |" in table and "| pt2 | 0.005 | 1 |" in table
    assert "| lora | 0.0005 | 1 |" in table and "| apt | 0.005 (lowest swept) | 1 |" in table


@pytest.mark.parametrize("exact, verdict", [
    ([0.74, 0.74, 0.74, 0.74], "met"),          # -1 from LoRA, +4 over pt2, above LLaMA-Adapter
    ([0.72, 0.72, 0.72, 0.72], "not met"),      # -3 from LoRA
    ([0.71, 0.77, 0.74, 0.74], "met"),          # on average -1 from LoRA, although one seed is -4
])
def test_the_moonshot_verdict_follows_the_mean_paired_margins(report, exact, verdict):
    records = _grid(report, _by(exact), _by([0.75] * 4), _by([0.70] * 4), _by([0.73] * 4))
    four = {("smollm2", task, seed) for task, seed in KEYS}
    rows = report.moonshot_table(records, report.chosen_rates(records), expected=four)
    row = next(line for line in rows if line.startswith("| exact |"))
    assert row.endswith(f"| {verdict} |")
    assert "| apt | - | - | - | not yet measured |" in rows
    # grid.yaml plans 6 SmolLM2 pairs (CB and RTE, seeds 1 to 3): with 4 of them the verdict is not final
    assert report.moonshot_keys() == ALL_KEYS
    rows = report.moonshot_table(records, report.chosen_rates(records))
    assert next(line for line in rows if line.startswith("| exact |")).endswith(f"| {verdict} so far (4 of 6 pairs) |")


def test_a_tie_with_llama_adapter_is_not_above_it_whatever_the_rounding(report):
    """30 vs 32 and 36 vs 34 of CB's 56: the margins cancel exactly, but in floating point their mean is 5.6e-15."""
    accuracy = [30 / 56, 36 / 56, 0.74, 0.74]
    records = _grid(report, _by(accuracy), _by(accuracy), _by([0.5] * 4), _by([32 / 56, 34 / 56, 0.74, 0.74]))
    rows = report.moonshot_table(records, report.chosen_rates(records), expected={("smollm2", t, s) for t, s in KEYS})
    assert next(line for line in rows if line.startswith("| exact |")) == \
        "| exact | +0.00 (4) | +16.46 (4) | +0.00 (4) | not met |"


def test_steps_to_90_counts_an_epoch_at_exactly_90_percent(report):
    run = record("exact", 0.01, 1, 0.0)
    run["epochs"] = [{"epoch": e, "step": 63 * e, "dev_accuracy": n / 277}
                     for e, n in enumerate((150, 207, 230, 225, 229), 1)]
    assert report.steps_to_90(run) == 126  # 207 of 277 is 90% of 230 of 277


def test_the_report_draws_the_learning_curves(report, tmp_path):
    records = _grid(report, _by([0.74] * 4), _by([0.75] * 4), _by([0.70] * 4), _by([0.73] * 4))
    path = tmp_path / "curves.png"
    assert report.plot_curves(records, report.chosen_rates(records), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.plot_curves(records, {}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    text = report.markdown(records, tmp_path / "report.png")
    assert (tmp_path / "report.png").is_file()
    assert "### smollm2, rte-t2t" in text and "## The moonshot" in text


def test_the_untuned_model_table_shows_both_readings_beside_the_majority_class(report, tmp_path):
    path = tmp_path / "zero_shot.json"
    assert report.zero_shot_table(path) == ["(no results/zero_shot.json: run zero_shot.py)"]
    scores = {"accuracy": 0.0, "invalid": 1.0, "first_word_accuracy": 0.3393, "first_word_invalid": 0.3214,
              "completion_loss": 4.0167, "dev_examples": 56, "majority_label": " no", "majority_accuracy": 0.5}
    path.write_text(json.dumps({"smollm2": {"tasks": {"rte-t2t": scores, "cb-t2t": scores}},
                                "gemma3-270m": {"tasks": {"cb-t2t": scores}}}))
    rows = report.zero_shot_table(path)[4:]
    assert [row.split(" | ")[:2] for row in rows] == [["| gemma3-270m", "cb-t2t"], ["| smollm2", "cb-t2t"],
                                                      ["| smollm2", "rte-t2t"]]
    assert rows[1] == "| smollm2 | cb-t2t | 56 | 0.0 | 100.0 | 33.9 | 32.1 | 4.017 | 'no': 50.0 |"


def test_the_untuned_model_is_read_on_its_first_word():
    module = load_script(SCRIPT.with_name("zero_shot.py"), "zero_shot")
    assert module.first_word(" no\n\nThe answer is no.") == "no"
    assert module.first_word(" \n ") == ""

    class Task:
        def format(self, example):
            return example["prompt"], example["label"]

    examples = [{"prompt": "p", "label": label} for label in (" no", " yes", " no", " maybe")]
    assert module.majority_accuracy(Task(), examples) == (" no", 0.5)


def test_the_start_table_has_a_column_per_model_and_says_where_peft_refused_one(report, tmp_path):
    def write(name, model, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"task": "cb-t2t", "examples": 16, "prefix_length": 16, "model_name": model,
                                    "model": model.upper(), "rows": rows,
                                    "metadata": {"command": f"init_loss.py --model {model}"}}))
        return path

    smol = write("init_loss.json", "smollm2", [
        {"prefix": "none", "completion_loss": 4.13}, {"prefix": "pt2", "prefix_init_std": 0.02, "completion_loss": 5.5},
        {"prefix": "llama-adapter (PEFT)", "completion_loss": 4.13}])
    gemma = write("init_loss-gemma3-270m.json", "gemma3-270m", [
        {"prefix": "none", "completion_loss": 4.66},
        {"prefix": "exact", "prefix_init_text": "yes no", "text": "label words", "completion_loss": 4.66},
        {"prefix": "llama-adapter (PEFT)", "completion_loss": None, "refused": "Unsupported model type"}])
    lines = report.init_table([smol, gemma])
    assert "SMOLLM2: `init_loss.py --model smollm2`; GEMMA3-270M: `init_loss.py --model gemma3-270m`" in lines[0]
    assert lines[2:] == ["| start | smollm2 | gemma3-270m |", "|---|---:|---:|",
                         "| none | 4.130 | 4.660 |",
                         "| pt2, init std 0.02 | 5.500 | - |",
                         "| llama-adapter (PEFT) | 4.130 | refused by PEFT |",
                         "| exact, from the label words ('yes no') | - | 4.660 |"]
    assert report.init_table([]) == ["(no results/init_loss.json: run init_loss.py)"]


def test_a_runs_time_counts_every_sitting_even_where_its_train_seconds_counted_the_last(report):
    resumed = record("lora", 0.01, 1, 0.7)
    resumed["epochs"][-1]["elapsed_seconds"], resumed["train_seconds"] = 5398.0, 3787.0  # an early PEFT record
    assert report.run_seconds(resumed) == 5398.0
    whole = record("apt", 0.01, 1, 0.7)
    whole["epochs"][-1]["elapsed_seconds"], whole["train_seconds"] = 2890.3, 2897.8  # the time after the last epoch
    assert report.run_seconds(whole) == 2897.8
    assert report.run_seconds(record("pt2", 0.01, 1, 0.7)) == 60.0  # epochs without times
    assert "| lora s1 | 0.01 | 70.0 | 0.0 | 0.400 | 3 / 3 | 96 | 10 | 90 min |" in report.run_table([resumed])


def test_a_failed_run_is_listed_as_failed_and_left_out_of_the_comparison(report):
    records = _grid(report, _by([0.74] * 4), _by([0.75] * 4), _by([0.70] * 4), _by([0.73] * 4))
    failed = next(r for r in records if r["arm"] == "exact" and r["seed"] == 2)
    del failed["dev"]
    failed["failed"] = "the training loss became nan at step 40"
    assert "| exact s2 | 0.01 | failed: the training loss became nan at step 40 (after 3 epochs) |" in \
        "\n".join(report.run_table(records))
    assert ("smollm2", "cb-t2t", 2) not in report.at_chosen_rates(records, report.chosen_rates(records))["exact"]
    assert len(report.paired_margins(records, report.chosen_rates(records), "exact", "lora")) == 3
