"""Comparison table and plot over run folders."""

import json

import pytest

from adaprefix.analysis.compare import headline, markdown_table, plot_comparison, summarize_runs


def _run(tmp_path, task, method, seed, dev, test=None):
    run = tmp_path / f"{task}-{method}-s{seed}"
    run.mkdir()
    metric = "f1" if test is not None else "accuracy"
    final = {"task": task, "method": method, "seed": seed, "epochs": 3, "best_epoch": 2, "main_metric": metric,
             "dev": {metric: dev}, "test": {metric: test} if test is not None else {},
             "trainable_parameters": 100, "train_seconds": 10.0}
    (run / "final_metrics.json").write_text(json.dumps(final))
    return run


def test_rows_average_seeds_and_report_test_at_best_dev_for_ner(tmp_path):
    runs = [_run(tmp_path, "rte", "apt", 1, 0.6), _run(tmp_path, "rte", "apt", 2, 0.7),
            _run(tmp_path, "rte", "pt2", 1, 0.5), _run(tmp_path, "conll04", "apt", 1, 0.8, test=0.75),
            tmp_path / "unfinished"]
    rows = summarize_runs(runs)
    by = {(r["task"], r["method"]): r for r in rows}
    assert by[("rte", "apt")]["mean"] == pytest.approx(65.0)
    assert by[("rte", "apt")]["std"] == pytest.approx(7.0710678)
    assert by[("conll04", "apt")]["mean"] == pytest.approx(75.0) and by[("conll04", "apt")]["reported"] == \
        "test at best dev"
    assert headline(json.loads((runs[0] / "final_metrics.json").read_text())) == 0.6
    table = markdown_table(rows)
    assert "| rte | apt | accuracy (best dev) | 65.00 | 7.07 | 1, 2 |" in table
    plot_comparison(rows, tmp_path / "plot.png", title="t")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
