"""The reproduction grid: expansion and layering of settings, the learning-rate sweep, records, the report."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks" / "reproduce"))
import grid as G  # noqa: E402
import report as R  # noqa: E402
import run as RUN  # noqa: E402

GRID = {
    "defaults": {"model": "minilm", "epochs": 1},
    "tasks": {"cb": {"common": {"epochs": 20, "batch_size": 16},
                     "prefix": {"learning_rate": 0.01, "prefix_length": 20},
                     "ft": {"learning_rate": 2e-5}}},
    "experiments": [
        {"name": "lr-sweep", "tasks": ["cb"], "seeds": [1], "methods": ["pt2", "ft"],
         "variants": {"x0.5": {"lr_scale": 0.5}, "x1": {}, "x2": {"lr_scale": 2}}},
        {"name": "main", "tasks": ["cb"], "seeds": [1, 2], "settings": {"learning_rate": "sweep"},
         "methods": ["pt2", "ft", {"name": "pt2+", "method": "pt2", "settings": {"prefix_length": 40,
                                                                               "learning_rate": "sweep:pt2"}}]},
    ],
}


def record(run_id, value, lr, experiment="lr-sweep", method="pt2", task="cb", variant="", seed=1, **extra):
    return {"run_id": run_id, "experiment": experiment, "task": task, "method": method, "variant": variant,
            "seed": seed, "value": value, "dev_value": value, "learning_rate": lr, "reported": "best dev",
            "metric": "accuracy", "trainable_params": 1000, "epochs": 20, "seconds": 10.0, **extra}


def test_runs_have_unique_ids_and_layered_settings():
    runs = G.expand(GRID)
    assert len({r.run_id for r in runs}) == len(runs) == 6 + 6
    pt2 = next(r for r in runs if r.run_id == "lr-sweep/cb-pt2-x2-s1")
    assert pt2.settings == {"model": "minilm", "epochs": 20, "batch_size": 16, "learning_rate": 0.01,
                            "prefix_length": 20, "lr_scale": 2}
    ft = next(r for r in runs if r.run_id == "lr-sweep/cb-ft-x0.5-s1")
    assert ft.settings["learning_rate"] == 2e-5 and "prefix_length" not in ft.settings
    plus = next(r for r in runs if r.run_id == "main/cb-pt2+-s2")
    assert (plus.train_method, plus.settings["prefix_length"], plus.settings["learning_rate"]) == ("pt2", 40,
                                                                                                 "sweep:pt2")


def test_seeds_vary_slowest():
    grid = {**GRID, "tasks": {**GRID["tasks"], "rte": GRID["tasks"]["cb"]},
            "experiments": [{"name": "main", "tasks": ["cb", "rte"], "seeds": [1, 2], "methods": ["pt2", "ft"]}]}
    assert [r.run_id for r in G.expand(grid)] == [
        "main/cb-pt2-s1", "main/cb-ft-s1", "main/rte-pt2-s1", "main/rte-ft-s1",
        "main/cb-pt2-s2", "main/cb-ft-s2", "main/rte-pt2-s2", "main/rte-ft-s2"]


def test_a_cut_keeps_only_its_seeds_for_the_cells_it_names():
    grid = {**GRID, "tasks": {**GRID["tasks"], "rte": GRID["tasks"]["cb"]},
            "experiments": [{"name": "parity", "tasks": ["cb", "rte"], "seeds": [1, 2], "methods": ["pt2"],
                             "variants": {"a": {}, "b": {}}, "cut": [{"task": "rte", "variants": ["b"], "seeds": [1]}]}]}
    assert [r.run_id for r in G.expand(grid)] == [
        "parity/cb-pt2-a-s1", "parity/rte-pt2-a-s1", "parity/cb-pt2-b-s1", "parity/rte-pt2-b-s1",
        "parity/cb-pt2-a-s2", "parity/rte-pt2-a-s2", "parity/cb-pt2-b-s2"]
    grid["experiments"][0]["cut"] = [{"task": "rte", "variants": ["b"], "seeds": []}]  # no seeds: the cell goes
    assert "parity/rte-pt2-b-s1" not in {r.run_id for r in G.expand(grid)}
    grid["experiments"][0]["cut"] = [{"task": "rte", "variants": ["c"], "seeds": [1]}]
    with pytest.raises(G.GridError, match=r"unknown variants \['c'\]"):
        G.expand(grid)


def test_lr_scale_multiplies_the_task_rate():
    run = next(r for r in G.expand(GRID) if r.run_id == "lr-sweep/cb-ft-x0.5-s1")
    settings = G.resolve_settings(GRID, run, [])
    assert settings["learning_rate"] == pytest.approx(1e-5)
    assert "lr_scale" not in settings and (settings["task"], settings["method"], settings["seed"]) == ("cb", "ft", 1)


def test_main_runs_wait_for_their_sweep_then_take_its_best_dev_rate():
    main_pt2 = next(r for r in G.expand(GRID) if r.run_id == "main/cb-pt2-s1")
    plus = next(r for r in G.expand(GRID) if r.run_id == "main/cb-pt2+-s1")
    partial = [record("lr-sweep/cb-pt2-x0.5-s1", 70.0, 0.005), record("lr-sweep/cb-pt2-x1-s1", 75.0, 0.01)]
    assert G.resolve_settings(GRID, main_pt2, partial) is None  # x2 still missing
    done = partial + [record("lr-sweep/cb-pt2-x2-s1", 75.0, 0.02)]
    assert G.resolve_settings(GRID, main_pt2, done)["learning_rate"] == 0.01  # tie: the smaller rate
    assert G.resolve_settings(GRID, plus, done)["learning_rate"] == 0.01  # pt2+ takes pt2's sweep
    ft = next(r for r in G.expand(GRID) if r.run_id == "main/cb-ft-s1")
    assert G.resolve_settings(GRID, ft, done) is None  # ft's own sweep has not run


EXTENDING = {**GRID, "experiments": [{**GRID["experiments"][0], "extend_at_edge": {"factor": 2, "max": 2}},
                                     GRID["experiments"][1]]}


def _pt2_sweep(*values):
    return [record(f"lr-sweep/cb-pt2-{v}-s1", value, lr, variant=v)
            for v, value, lr in zip(("x0.5", "x1", "x2"), values, (0.005, 0.01, 0.02))]


def test_a_sweep_whose_best_is_at_its_top_gains_a_rate_above_before_main_runs_take_one():
    main_pt2 = next(r for r in G.expand(EXTENDING) if r.run_id == "main/cb-pt2-s1")
    records = _pt2_sweep(70.0, 72.0, 75.0)
    [up] = G.edge_extensions(EXTENDING, records)
    assert up.run_id == "lr-sweep/cb-pt2-lr-up1-s1"
    settings = G.resolve_settings(EXTENDING, up, records)
    assert settings["learning_rate"] == pytest.approx(0.04) and settings["prefix_length"] == 20
    assert G.resolve_settings(EXTENDING, main_pt2, records) is None  # waits for the extension
    planned = [r.run_id for r in G.planned_runs(EXTENDING, records)]
    assert planned.index(up.run_id) == planned.index("lr-sweep/cb-pt2-x2-s1") + 1

    worse = records + [record(up.run_id, 73.0, 0.04, variant="lr-up1")]  # the optimum was inside after all
    assert [r.run_id for r in G.edge_extensions(EXTENDING, worse)] == [up.run_id]
    assert G.resolve_settings(EXTENDING, main_pt2, worse)["learning_rate"] == 0.02

    better = records + [record(up.run_id, 76.0, 0.04, variant="lr-up1")]  # still at the edge: one more
    assert [r.run_id for r in G.edge_extensions(EXTENDING, better)][-1] == "lr-sweep/cb-pt2-lr-up2-s1"
    assert G.resolve_settings(EXTENDING, main_pt2, better) is None
    capped = better + [record("lr-sweep/cb-pt2-lr-up2-s1", 77.0, 0.08, variant="lr-up2")]
    assert len(G.edge_extensions(EXTENDING, capped)) == 2  # max 2: no third, even at the edge
    assert G.resolve_settings(EXTENDING, main_pt2, capped)["learning_rate"] == 0.08
    assert ("| cb | pt2 | 5 | 0.005: 70.0 · 0.01: 72.0 · 0.02: 75.0 · 0.04: 76.0 · 0.08: 77.0 | 0.08 | highest |"
            in R.sweep_table(capped, EXTENDING))


def test_a_sweep_extends_downwards_from_a_best_lowest_rate_and_not_at_all_when_flat():
    [down] = G.edge_extensions(EXTENDING, _pt2_sweep(75.0, 72.0, 70.0))
    assert down.run_id == "lr-sweep/cb-pt2-lr-down1-s1"
    assert G.resolve_settings(EXTENDING, down, [])["learning_rate"] == pytest.approx(0.0025)
    assert G.edge_extensions(EXTENDING, _pt2_sweep(75.0, 75.0, 70.0)) == []  # tied with an inner rate
    assert G.edge_extensions(EXTENDING, _pt2_sweep(70.0, 72.0)) == []  # the sweep is not finished
    assert G.edge_extensions(GRID, _pt2_sweep(70.0, 72.0, 75.0)) == []  # no extend_at_edge: no extension
    bad = {**EXTENDING, "experiments": [{**EXTENDING["experiments"][0], "extend_at_edge": {"factor": 1, "max": 2}}]}
    with pytest.raises(G.GridError, match="factor > 1"):
        G.edge_extensions(bad, _pt2_sweep(70.0, 72.0, 75.0))
    sweep = EXTENDING["experiments"][0]
    mixed = {**EXTENDING, "experiments": [{**sweep, "variants": {**sweep["variants"], "x2": {"lr_scale": 2,
                                                                                            "epochs": 40}}}]}
    with pytest.raises(G.GridError, match=r"differ in learning rate only; .*x2-s1 differ in \['epochs'\]"):
        G.edge_extensions(mixed, _pt2_sweep(70.0, 72.0, 75.0))


def test_a_tie_at_the_top_edge_is_flat_and_not_extended():
    assert G.edge_extensions(EXTENDING, _pt2_sweep(70.0, 75.0, 75.0)) == []


def test_a_failed_sweep_run_counts_as_its_worst_rate_and_never_blocks_the_main_grid():
    main_pt2 = next(r for r in G.expand(EXTENDING) if r.run_id == "main/cb-pt2-s1")
    climbing = _pt2_sweep(70.0, 72.0, 75.0)
    up1 = "lr-sweep/cb-pt2-lr-up1-s1"
    assert G.resolve_settings(EXTENDING, main_pt2, climbing) is None
    assert [r.run_id for r in G.edge_extensions(EXTENDING, climbing, failed={up1})] == [up1]  # no lr-up2
    assert G.resolve_settings(EXTENDING, main_pt2, climbing, failed={up1})["learning_rate"] == 0.02
    # a static run that diverged at the top: the best is now inside, so nothing is added at its rate again
    partial = _pt2_sweep(70.0, 75.0)
    assert G.edge_extensions(EXTENDING, partial, failed={"lr-sweep/cb-pt2-x2-s1"}) == []
    assert G.resolve_settings(EXTENDING, main_pt2, partial, failed={"lr-sweep/cb-pt2-x2-s1"})["learning_rate"] == 0.01


def test_an_extension_recorded_at_another_rate_than_the_rule_asks_is_an_error():
    records = _pt2_sweep(70.0, 72.0, 75.0) + [record("lr-sweep/cb-pt2-lr-up1-s1", 76.0, 0.08, variant="lr-up1")]
    with pytest.raises(G.GridError, match=r"lr-up1-s1 was recorded at learning rate 0.08.*asks 0.04"):
        G.edge_extensions(EXTENDING, records)


def _fake_runner(monkeypatch, tmp_path, grid, dev, exit_codes=None):
    """Runs run.main() on ``grid`` with training replaced: dev value by variant, exit codes by run id."""
    monkeypatch.setattr(RUN, "load_grid", lambda: grid)
    monkeypatch.setattr(RUN, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(RUN, "FAILURES", tmp_path / "failures.jsonl")
    monkeypatch.setattr(RUN, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(RUN, "_git", lambda *args: "abc")
    rates = {}

    def train(run, settings):
        rates[run.run_id] = settings["learning_rate"]
        if (exit_codes or {}).get(run.run_id):
            raise RUN.subprocess.CalledProcessError(exit_codes[run.run_id], ["adaprefix"])
        return 1.0

    monkeypatch.setattr(RUN, "train_one", train)
    monkeypatch.setattr(RUN, "make_record", lambda run, settings, folder, seconds, commit: {
        **record(run.run_id, dev.get(run.variant, 60.0), settings["learning_rate"], experiment=run.experiment,
                 method=run.method, task=run.task, variant=run.variant, seed=run.seed)})
    return rates


def test_main_runs_listed_before_the_sweep_still_wait_for_its_extensions(tmp_path, monkeypatch):
    grid = {**EXTENDING, "experiments": [EXTENDING["experiments"][1], EXTENDING["experiments"][0]]}
    rates = _fake_runner(monkeypatch, tmp_path, grid, {"x0.5": 70.0, "x1": 72.0, "x2": 75.0, "lr-up1": 76.0})
    monkeypatch.setattr(sys, "argv", ["run.py"])
    RUN.main()
    assert rates["lr-sweep/cb-pt2-lr-up2-s1"] == pytest.approx(0.08)  # up1 was best: one more, then 60 < 76
    assert rates["main/cb-pt2-s2"] == pytest.approx(0.04)  # not 0.02, which a main run ahead of up1 would take


def test_a_run_another_process_is_training_is_skipped_not_failed(tmp_path, monkeypatch, capsys):
    busy = "lr-sweep/cb-pt2-x1-s1"
    rates = _fake_runner(monkeypatch, tmp_path, GRID, {}, exit_codes={busy: RUN.BUSY})
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "lr-sweep", "--poll", "0"])
    RUN.main()
    assert busy in rates and len(rates) == 6
    assert not (tmp_path / "failures.jsonl").exists()
    assert busy not in {r["run_id"] for r in RUN.read_records()}
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == "grid: 5 of 6 runs recorded; 1 being trained by another process", "not 'grid complete'"


def test_a_runner_waits_for_a_run_another_runner_has_then_takes_what_its_record_unblocks(tmp_path, monkeypatch,
                                                                                           capsys):
    rates = _fake_runner(monkeypatch, tmp_path, GRID, {})
    other = "lr-sweep/cb-pt2-x1-s1"  # the other runner's: until it records, pt2's sweep (and its main runs) wait
    pauses = []
    with RUN.claim(other) as got:  # as the other runner holds it (a second open file conflicts, as two processes do)
        assert got

        def pause(seconds):
            pauses.append(seconds)
            assert seconds == 30.0
            if len(pauses) == 2:  # the other runner finishes meanwhile: its record appears
                RUN.append_record(record(other, 60.0, 0.01, variant="x1"), False)
            if len(pauses) > 2:
                raise AssertionError("still waiting after the run was recorded")

        monkeypatch.setattr(RUN, "pause", pause)
        monkeypatch.setattr(sys, "argv", ["run.py", "--poll", "30"])
        RUN.main()
    assert other not in rates, "never trained twice"
    assert len(pauses) == 2
    recorded = {r["run_id"] for r in RUN.read_records()}
    assert {"main/cb-pt2-s1", "main/cb-pt2-s2"} <= recorded  # unblocked by the other runner's record
    out = capsys.readouterr().out
    assert out.count("=== waiting for 1 run(s) another process is training") == 1  # said once, not every look
    assert f"=== {other}: another runner has it; skipped for now" in out
    assert out.strip().endswith("grid complete: 12 of 12 runs recorded")


def test_a_run_another_runner_let_go_of_unrecorded_is_trained_after_the_wait(tmp_path, monkeypatch):
    rates = _fake_runner(monkeypatch, tmp_path, GRID, {})
    other = "lr-sweep/cb-pt2-x1-s1"
    held = RUN.claim(other)
    assert held.__enter__()

    pauses = []

    def pause(seconds):  # the other runner is stopped (or its run failed there) without recording it
        pauses.append(seconds)
        if len(pauses) > 2:
            raise AssertionError("still waiting for a run no runner has")
        held.__exit__(None, None, None)

    monkeypatch.setattr(RUN, "pause", pause)
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "lr-sweep"])
    RUN.main()
    assert other in rates and len(rates) == 6


def test_a_file_another_runner_committed_is_not_retried(tmp_path, monkeypatch, capsys):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "other.txt").write_text("clean\n")
    git("add", "other.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    (tmp_path / "runs.jsonl").write_text("{}\n")
    (tmp_path / "other.txt").write_text("dirty\n")  # a tracked file changed: git says "no changes added to commit"
    git("add", "runs.jsonl")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "the other runner's commit")
    monkeypatch.setattr(RUN, "REPO", tmp_path)
    monkeypatch.setattr(RUN.time, "sleep", lambda s: pytest.fail("retried a commit that was already made"))
    RUN.commit_file(tmp_path / "runs.jsonl", "reproduce: record x")
    assert "could not commit" not in capsys.readouterr().err


def test_a_claimed_run_is_looked_up_again_once_the_claim_is_free(tmp_path, monkeypatch):
    # the other runner recorded it and let go between this runner's reading of the records and its claim
    rates = _fake_runner(monkeypatch, tmp_path, GRID, {})
    late = "lr-sweep/cb-pt2-x0.5-s1"
    real_claim = RUN.claim

    def claim(name):
        if name == late:
            RUN.append_record(record(late, 60.0, 0.005, variant="x0.5"), False)
        return real_claim(name)

    monkeypatch.setattr(RUN, "claim", claim)
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "lr-sweep"])
    RUN.main()
    assert late not in rates and len(rates) == 5


def test_a_stop_asked_for_while_waiting_starts_no_training(tmp_path, monkeypatch):
    rates = _fake_runner(monkeypatch, tmp_path, GRID, {})
    monkeypatch.setitem(RUN._STOP, "requested", False)
    with RUN.claim("lr-sweep/cb-pt2-x1-s1"):
        def pause(seconds):  # SIGTERM arrives during the wait
            RUN._STOP["requested"] = True
            RUN.append_record(record("lr-sweep/cb-pt2-x1-s1", 60.0, 0.01, variant="x1"), False)

        monkeypatch.setattr(RUN, "pause", pause)
        monkeypatch.setattr(sys, "argv", ["run.py", "--only", "lr-sweep"])
        with pytest.raises(SystemExit) as stopped:
            RUN.main()
    assert stopped.value.code == 128 + 15
    trained = set(rates)
    assert len(trained) == 5 and "lr-sweep/cb-pt2-x1-s1" not in trained  # nothing after the stop


def test_the_pause_ends_early_when_the_runner_is_stopped(monkeypatch):
    monkeypatch.setitem(RUN._STOP, "requested", True)
    started = time.monotonic()
    RUN.pause(30)
    assert time.monotonic() - started < 1


def test_the_records_lock_follows_a_file_replaced_while_waiting_and_cuts_a_torn_line(tmp_path, monkeypatch, capsys):
    import threading

    target = tmp_path / "runs.jsonl"
    monkeypatch.setattr(RUN, "RECORDS", target)
    target.write_text(json.dumps(record("a/x-s1", 1.0, 0.1)) + "\n" + '{"run_id": "a/y-s1", "dev_metrics": {}')
    appended = threading.Event()
    with RUN.locked_records() as f:  # as recount_seconds.py holds it while it replaces the file
        assert not f.read().endswith("{}"), "the torn line is cut off"
        worker = threading.Thread(target=lambda: (RUN.append_record(record("a/z-s1", 3.0, 0.1), False),
                                                  appended.set()))
        worker.start()
        assert not appended.wait(0.5), "a runner waits for the lock"
        replacement = tmp_path / "new.jsonl"
        replacement.write_text(json.dumps(record("a/x-s1", 2.0, 0.1)) + "\n")
        os.replace(replacement, target)
    worker.join(5)
    assert [(r["run_id"], r["value"]) for r in RUN.read_records()] == [("a/x-s1", 2.0), ("a/z-s1", 3.0)]
    assert "cut off a torn last line" in capsys.readouterr().err


def test_the_last_line_says_why_a_runner_stopped():
    runs = [r for r in G.expand(GRID) if r.experiment == "lr-sweep"]
    ids = [r.run_id for r in runs]
    assert RUN.progress_line(runs, set(ids), 0, set(), set()) == "grid complete: 6 of 6 runs recorded"
    assert RUN.progress_line(runs, set(ids[:3]), 1, {ids[3]}, {ids[4], "elsewhere/x-s1"}) == (
        "grid: 3 of 6 runs recorded; 1 waiting on a learning-rate sweep or gate map, 1 being trained by another "
        "process, 1 failed (--retry-failed)")
    assert RUN.progress_line(runs, set(ids[:3]), 0, set(), set(), ready=3) == (
        "grid: 3 of 6 runs recorded; 3 ready (--max-runs reached)")


def test_sigterm_outside_a_training_lets_the_runner_finish_what_it_writes(monkeypatch):
    import signal

    monkeypatch.setitem(RUN._STOP, "requested", False)
    monkeypatch.setitem(RUN._STOP, "in_child", False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        RUN.stop_on_sigterm()
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while a record is committed: no exit here
        assert RUN._STOP["requested"]
        RUN._STOP.update(requested=False, in_child=True)
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert stopped.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_runner_trains_an_edge_extension_before_the_main_run_that_takes_its_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(RUN, "load_grid", lambda: EXTENDING)
    monkeypatch.setattr(RUN, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(RUN, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(RUN, "_git", lambda *args: "abc")
    rates = {}
    monkeypatch.setattr(RUN, "train_one", lambda run, settings: rates.setdefault(run.run_id,
                                                                                 settings["learning_rate"]) and 1.0)
    dev = {"x0.5": 70.0, "x1": 72.0, "x2": 75.0, "lr-up1": 74.0}  # best at the top, then the rate above is worse
    monkeypatch.setattr(RUN, "make_record", lambda run, settings, folder, seconds, commit: {
        **record(run.run_id, dev.get(run.variant, 60.0), settings["learning_rate"], experiment=run.experiment,
                 method=run.method, task=run.task, variant=run.variant, seed=run.seed)})
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "lr-sweep", "--only", "main"])
    RUN.main()
    order = list(rates)
    assert order.index("lr-sweep/cb-pt2-lr-up1-s1") < order.index("main/cb-pt2-s2")
    assert rates["lr-sweep/cb-pt2-lr-up1-s1"] == pytest.approx(0.04)
    assert rates["main/cb-pt2-s2"] == pytest.approx(0.02)
    assert "lr-sweep/cb-pt2-lr-up2-s1" not in rates


def test_a_torn_last_record_is_dropped_and_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2')
    with pytest.warns(UserWarning, match="runs.jsonl:2: dropped a torn last line"):
        assert RUN.read_records(path) == [{"a": 1}]
    path.write_text('{"a": 1\n' + json.dumps({"a": 2}) + "\n")
    with pytest.raises(SystemExit, match="runs.jsonl:1: not a JSON object"):
        RUN.read_records(path)


def test_report_cells_are_mean_and_sample_std_with_missing_seeds_marked():
    assert R.cell([70.0, 72.0, 74.0], 3) == "72.0 ± 2.0"
    assert R.cell([70.0, 74.0], 3) == "72.0 ± 2.8 (2/3)"
    assert R.cell([]) == "–"
    assert R.cell([71.43], 3) == "71.4 (1/3)" and R.cell([71.43]) == "71.4"  # one seed: no spread to show


def test_report_tables_follow_the_records():
    records = [record(f"main/cb-{m}-s{s}", v, 0.01, experiment="main", method=m, seed=s)
               for m, values in (("pt2", (70.0, 72.0)), ("ft", (60.0, 64.0))) for s, v in zip((1, 2), values)]
    plan = R.planned_seeds(GRID)
    table = R.paper_table(records, "main", plan)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert list(rows) == ["ft", "pt2"]  # the paper's method order
    assert "| 71.0 ± 1.4 | 71.0 |" in rows["pt2"] and "| 62.0 ± 2.8 | 62.0 |" in rows["ft"]
    gap = R.margins(records, "main", "pt2", "ft", key="experiment")
    assert "| cb | main | 2 | +9.0 | 1.4 | 2 / 0 / 0 |" in gap  # differences +10, +8
    # with a second SuperGLUE task planned, the average waits for it instead of averaging CB alone
    two = {**GRID, "tasks": {**GRID["tasks"], "copa": GRID["tasks"]["cb"]},
           "experiments": [GRID["experiments"][0], {**GRID["experiments"][1], "tasks": ["cb", "copa"]}]}
    rows = {line.split("|")[1].strip(): line for line in R.paper_table(records, "main", R.planned_seeds(two))
            .splitlines()[2:]}
    assert "| 71.0 ± 1.4 | – | – |" in rows["pt2"]  # cb, copa (none yet), SuperGLUE avg
    assert "SuperGLUE avg (cb, copa) | NER avg (none) |" in R.paper_table(records, "main", R.planned_seeds(two))


def test_margins_pair_runs_by_seed():
    values = {"apt": (75.0, 73.2, 71.4), "pt2": (71.4, 73.2, 73.2)}
    records = [record(f"main/cb-{m}-s{s}", v, 0.01, experiment="main", method=m, seed=s)
               for m, vs in values.items() for s, v in zip((1, 2, 3), vs)]
    # runs pair by seed, whatever order the records come in
    gap = R.margins(list(reversed(records)), "main", "apt", "pt2", key="experiment")
    assert "| cb | main | 3 | +0.6 | 2.7 | 1 / 1 / 1 |" in gap  # differences +3.6, 0, -1.8
    assert R.margins(records[:4], "main", "apt", "pt2", key="experiment").startswith("_apt − pt2: fewer than two seeds")


def test_margins_pair_only_shared_seeds_mark_missing_ones_and_leave_out_the_selection_seed():
    values = {"apt": {1: 80.0, 2: 73.0, 3: 71.0}, "pt2": {1: 70.0, 2: 72.0}}  # pt2's seed 3 not in yet
    records = [record(f"main/cb-{m}-s{s}", v, 0.01, experiment="main", method=m, seed=s)
               for m, vs in values.items() for s, v in vs.items()]
    plan = {("main", "cb", "apt", ""): 3, ("main", "cb", "pt2", ""): 3}
    gap = R.margins(records, "main", "apt", "pt2", key="experiment", selection_seed=1, plan=plan)
    # seeds 1 and 2 only (+10, +1), not apt's three against pt2's two (74.7 - 71.0)
    assert "| cb | main | 2/3 | +5.5 | 6.4 | 2 / 0 / 0 | +1.0 (1 seed) |" in gap
    assert "without seed 1" in gap and "without seed" not in R.margins(records, "main", "apt", "pt2",
                                                                        key="experiment")


def test_margins_over_several_tasks_add_a_sign_test_over_every_pair():
    values = {("cb", "apt"): (75.0, 73.2, 71.4), ("cb", "pt2"): (71.4, 73.2, 73.2),  # +, level, -
              ("copa", "apt"): (66.0, 64.0, 65.0), ("copa", "pt2"): (63.0, 60.0, 62.0)}  # +, +, +
    records = [record(f"main/{t}-{m}-s{s}", v, 0.01, experiment="main", task=t, method=m, seed=s)
               for (t, m), vs in values.items() for s, v in zip((1, 2, 3), vs)]
    gap = R.margins(records, "main", "apt", "pt2", key="experiment")
    # 4 above, 1 below (the level pair carries no sign): P(X >= 4 | n = 5) = 6/32
    assert "| all rows | – | 6 | – | – | 4 / 1 / 1 (sign test: p = 0.188) |" in gap
    assert "all rows" not in R.margins([r for r in records if r["task"] == "cb"], "main", "apt", "pt2",
                                       key="experiment")
    assert R.sign_test_p(3, 0) == 0.125 and R.sign_test_p(0, 3) == 1.0 and R.sign_test_p(0, 0) == 1.0
    assert R.sign_test_p(12, 3) == pytest.approx(0.01758, abs=1e-5)  # 15 pairs, 12 wins: scipy's binomtest


def test_the_epoch_choice_table_shows_what_picking_the_best_dev_epoch_adds():
    records = [record("main/cb-apt-s1", 75.0, 0.01, experiment="main", method="apt", dev_by_epoch=[60.0, 75.0, 70.0]),
               record("main/cb-apt-s2", 72.0, 0.01, experiment="main", method="apt", seed=2,
                      dev_by_epoch=[72.0, 66.0]),
               record("main/cb-ft-s1", 80.0, 2e-5, experiment="main", method="ft", dev_by_epoch=[70.0, 80.0])]
    table = R.epoch_choice_table(records, "main")
    assert "| cb | ft | 1 | 80.0 | 80.0 | +0.0 |" in table
    assert "| cb | apt | 2 | 73.5 | 68.0 | +5.5 |" in table
    assert table.index("| cb | ft |") < table.index("| cb | apt |")  # the paper's method order


def test_variants_and_experiment_settings_may_differ_for_ft_and_prefix_methods():
    grid = {**GRID, "experiments": [{"name": "lr-sweep", "tasks": ["cb"], "seeds": [1], "methods": ["pt2", "ft"],
                                     "variants": {"hi": {"prefix": {"lr_scale": 2}, "ft": {"lr_scale": 2.5}}}}]}
    runs = {r.method: G.resolve_settings(grid, r, []) for r in G.expand(grid)}
    assert runs["pt2"]["learning_rate"] == pytest.approx(0.02)
    assert runs["ft"]["learning_rate"] == pytest.approx(5e-5)


def test_a_run_with_identical_settings_reuses_the_record():
    main_pt2 = next(r for r in G.expand(GRID) if r.run_id == "main/cb-pt2-s1")
    sweep = [record(f"lr-sweep/cb-pt2-x{k}-s1", v, lr) for k, v, lr in (("0.5", 70.0, 0.005), ("1", 76.0, 0.01),
                                                                         ("2", 75.0, 0.02))]
    for r, scale in zip(sweep, ("x0.5", "x1", "x2")):
        run = next(x for x in G.expand(GRID) if x.run_id == f"lr-sweep/cb-pt2-{scale}-s1")
        r["settings"] = G.resolve_settings(GRID, run, [])
    settings = G.resolve_settings(GRID, main_pt2, sweep)
    assert RUN.reusable_record(main_pt2, settings, sweep)["run_id"] == "lr-sweep/cb-pt2-x1-s1"
    seed2 = next(r for r in G.expand(GRID) if r.run_id == "main/cb-pt2-s2")
    assert RUN.reusable_record(seed2, G.resolve_settings(GRID, seed2, sweep), sweep) is None


def test_gate_section_reads_the_committed_json_and_names_the_heavier_half(tmp_path, monkeypatch):
    gates = tmp_path / "results" / "gates"
    gates.mkdir(parents=True)
    summary = {"run_id": "main/conll04-apt-s1", "task": "conll04", "method": "apt", "split": "dev", "examples": 5,
               "effective_gate": [[0.9, 0.7], [0.8, 0.6], [0.2, 0.2], [0.1, 0.3]], "lambda": [1.2, 1.1, 0.4, 0.3]}
    (gates / "main__conll04-apt-s1.json").write_text(json.dumps(summary))
    monkeypatch.setattr(R, "HERE", tmp_path)
    section = R.gate_section()
    assert "| main/conll04-apt-s1 | 5 | 1.20, 1.10, 0.40, 0.30 | 0.750 | 0.200 | lower |" in section
    assert (gates / "main__conll04-apt-s1.png").stat().st_size > 0
    assert R.heavier_half(0.427, 0.412) == "neither (within 5%)"  # COPA's, a hair apart
    assert R.heavier_half(0.737, 0.766) == "neither (within 5%)" and R.heavier_half(0.983, 0.828) == "lower"
    assert R.heavier_half(0.30, 0.40) == "upper"


def test_loss_flattening_compares_the_last_epochs_with_the_ones_before():
    assert R.loss_flattened([1.0, 0.8, 0.6, 0.50, 0.50, 0.49, 0.48, 0.48, 0.47]) is True
    assert R.loss_flattened([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]) is False  # (0.9 - 0.6) / 0.9 > 5%
    assert R.loss_flattened([1.0, 0.9]) is None


def test_pt2_star_lengths_come_from_the_recorded_gates_of_the_task_s_apt_run(tmp_path, monkeypatch):
    grid = {**GRID, "experiments": [{"name": "pt2-star", "tasks": ["cb"], "seeds": [1],
                                     "methods": [{"name": "pt2*", "method": "pt2"}],
                                     "variants": {"half": {"prefix_lengths": {"from_gates": "main/{task}-apt-s1",
                                                                              "budget_ratio": 0.5}}}}]}
    monkeypatch.setattr(G, "HERE", tmp_path)
    run = G.expand(grid)[0]
    assert run.run_id == "pt2-star/cb-pt2*-half-s1"
    assert G.resolve_settings(grid, run, []) is None  # the APT run's gates are not recorded yet
    gates = tmp_path / "results" / "gates"
    gates.mkdir(parents=True)
    (gates / "main__cb-apt-s1.json").write_text(json.dumps({"effective_gate": [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]}))
    assert G.resolve_settings(grid, run, [])["prefix_lengths"] == [2, 0, 1]  # budget 3 shared 2 : 0 : 1


def test_within_a_seed_each_variant_covers_every_task_before_the_next():
    grid = {**GRID, "tasks": {**GRID["tasks"], "rte": GRID["tasks"]["cb"]},
            "experiments": [{"name": "parity", "tasks": ["cb", "rte"], "seeds": [1], "methods": ["pt2"],
                             "variants": {"a": {}, "b": {}}}]}
    assert [r.run_id for r in G.expand(grid)] == ["parity/cb-pt2-a-s1", "parity/rte-pt2-a-s1",
                                                  "parity/cb-pt2-b-s1", "parity/rte-pt2-b-s1"]


def test_a_failed_run_is_noted_and_skipped_and_the_grid_goes_on(tmp_path, monkeypatch):
    import subprocess

    grid = {**GRID, "experiments": [{"name": "main", "tasks": ["cb"], "seeds": [1, 2], "methods": ["pt2"]}]}
    monkeypatch.setattr(RUN, "load_grid", lambda: grid)
    monkeypatch.setattr(RUN, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(RUN, "FAILURES", tmp_path / "failures.jsonl")
    monkeypatch.setattr(RUN, "_git", lambda *args: "abc")
    tried = []

    def fail(run, settings):
        tried.append(run.run_id)
        raise subprocess.CalledProcessError(1, ["adaprefix", "train"])

    monkeypatch.setattr(RUN, "train_one", fail)
    monkeypatch.setattr(sys, "argv", ["run.py"])
    RUN.main()
    assert tried == ["main/cb-pt2-s1", "main/cb-pt2-s2"]  # the first failure did not stop the grid
    assert [f["run_id"] for f in RUN.read_records(tmp_path / "failures.jsonl")] == tried
    RUN.main()  # a second sitting skips them
    assert len(tried) == 2
    monkeypatch.setattr(sys, "argv", ["run.py", "--retry-failed"])
    RUN.main()  # unless asked to retry them
    assert len(tried) == 4


def test_a_record_names_the_backbone_its_run_trained(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("task: cb\nmethod: apt\nmodel: mpnet\nepochs: 2\nbatch_size: 16\n"
                                         "adapter: {prefix_length: 20}\n")
    (run_dir / "final_metrics.json").write_text(json.dumps({
        "main_metric": "accuracy", "dev": {"loss": 0.6, "accuracy": 0.75, "macro_f1": 0.5123}, "test": {}, "best_epoch": 2, "train_examples": 250,
        "train_examples_full": 250, "trainable_parameters": 10, "max_length": 128}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "dev_accuracy": 0.5}) + "\n")
    run = G.Run("mpnet", "cb", "apt", "apt", "", 1, {"model": "mpnet", "learning_rate": 0.01})
    made = RUN.make_record(run, run.settings, run_dir, 1.0, "abc")
    assert made["model"] == "mpnet" and made["value"] == 75.0 and made["run_id"] == "mpnet/cb-apt-s1"
    assert made["dev_metrics"] == {"accuracy": 75.0, "macro_f1": 51.23}  # no loss, percent like the value


def test_a_resumed_runs_record_counts_every_sitting_and_says_when_it_cannot():
    # 300 s trained over two sittings, the last one 100 s of which 2 s went to starting the process.
    assert RUN.run_seconds({"train_seconds": 300.0, "sitting_seconds": 98.0}, 100.0) == {"seconds": 300.0 + 2.0}
    assert RUN.run_seconds({"train_seconds": 98.0, "sitting_seconds": 98.0, "train_seconds_partial": True},
                           100.0) == {"seconds": 100.0, "seconds_partial": True}
    assert RUN.run_seconds({"train_seconds": 98.0}, 100.0) == {"seconds": 100.0}  # an older recipe's final
    assert RUN.run_seconds({"train_seconds": 98.0, "resumed": True}, 100.0) == {"seconds": 100.0,
                                                                                "seconds_partial": True}
    # a process clock that read less than the recipe's (the clamp): never below the recipe's own count
    assert RUN.run_seconds({"train_seconds": 300.0, "sitting_seconds": 101.0}, 100.0) == {"seconds": 300.0}


def test_the_time_table_marks_means_that_count_a_last_sitting_only():
    records = [record("main/cb-pt2-s1", 70.0, 0.01, experiment="main"),
               record("main/cb-pt2-s2", 70.0, 0.01, experiment="main", seed=2, seconds_partial=True),
               record("main/cb-apt-s1", 70.0, 0.01, experiment="main", method="apt")]
    table = R.time_table(records)
    assert "| main | cb | pt2 | cpu | 2 | 20 | ≥ 10 |" in table and "| main | cb | apt | cpu | 1 | 20 | 10 |" in table
    assert "recount_seconds.py --write" in table
    assert "≥" not in R.time_table(records[:1])
    copy = record("main/cb-apt-s2", 70.0, 0.01, experiment="main", method="apt", seed=2, reused_from="x/y")
    assert "| main | cb | apt | cpu | 1 | 20 | 10 |" in R.time_table(records + [copy]), "a copy is no run of its own"


def test_runs_on_a_gpu_are_named_apart_and_never_price_the_cpu_runs_left():
    gpu = {"versions": {"device": "NVIDIA H200"}}
    records = [{**record("lr-sweep/cb-pt2-x1-s1", 70.0, 0.01), "model": "minilm", "seconds": 600.0},
               {**record("lr-sweep/cb-pt2-x2-s1", 72.0, 0.02), "model": "minilm", "seconds": 60.0, **gpu},
               {**record("lr-sweep/cb-ft-x1-s1", 70.0, 2e-5, method="ft"), "model": "minilm", "seconds": 30.0,
                **gpu}]
    table = R.time_table(records)
    assert "| lr-sweep | cb | pt2 | cpu | 1 | 20 | 600 |" in table
    assert "| lr-sweep | cb | pt2 | NVIDIA H200 | 1 | 20 | 60 |" in table
    progress = R.progress_table(records, GRID)
    # the cpu pt2 run's 10 minutes price every run left (ft's GPU half-minute is no CPU price)
    assert "| lr-sweep | cb | 3 / 6 | 10 |" in progress and "9 runs left: about 1.5 CPU-hours" in progress
    devices = R.devices_table(records)
    assert "| lr-sweep | cb | NVIDIA H200 (2 runs), cpu (1 run) — mixed |" in devices
    assert R.devices_table(records[:1]) == "Every run trained on the CPU.\n"
    only_gpu = R.devices_table(records[1:] + [{**records[0], "run_id": "main/cb-pt2-s1", "experiment": "main",
                                                 "reused_from": "lr-sweep/cb-pt2-x1-s1", **gpu}])
    assert "| lr-sweep | cb | NVIDIA H200 (2 runs) |" in only_gpu
    assert "| main | cb | NVIDIA H200 (1 run) |" in only_gpu, "a reuse counts where its run trained"
    reused_from_cpu = {**records[0], "run_id": "main/cb-pt2-s1", "experiment": "main", "reused_from": "x"}
    mixed = R.devices_table([reused_from_cpu, {**record("main/cb-pt2-s2", 70.0, 0.01, experiment="main"), **gpu}])
    assert "| main | cb | NVIDIA H200 (1 run), cpu (1 run) — mixed |" in mixed
    assert "device" in RUN._versions()  # what every record now notes (here: this machine's)


def test_a_record_names_the_gpu_it_trained_on(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    assert RUN._versions()["device"] == "NVIDIA H200"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert RUN._versions()["device"] == "cpu"


def test_the_dev_metric_table_shows_cb_macro_f1_beside_accuracy():
    records = [{**record(f"parity/cb-pt2-std1-shift-s{s}", 71.43, 0.01, experiment="parity", method="pt2", seed=s,
                         variant="std1-shift"), "dev_metrics": {"accuracy": 71.43, "macro_f1": f1}}
               for s, f1 in ((1, 50.0), (2, 54.0))]
    table = R.variant_table(records + [record("parity/cb-apt-std1-shift-s1", 75.0, 0.01, experiment="parity",
                                              method="apt", variant="std1-shift")],  # an old record: no dev_metrics
                            "parity", {("parity", "cb", m, "std1-shift"): 3 for m in ("pt2", "apt")},
                            dev_metric="macro_f1")
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 1 and "| cb | pt2 | dev macro_f1 |" in rows[0] and "| 52.0 ± 2.8 (2/3) |" in rows[0]


def test_progress_counts_recorded_runs_per_experiment_and_task():
    runs = G.expand(GRID)
    first = runs[0]
    records = [{**record(first.run_id, 70.0, 0.01, experiment=first.experiment, task=first.task), "model": "minilm",
                "seconds": 600.0}]
    table = R.progress_table(records, GRID)
    planned = sum(1 for r in runs if (r.experiment, r.task) == (first.experiment, first.task))
    assert f"| {first.experiment} | {first.task} | 1 / {planned} | 10 |" in table
    others = [line for line in table.splitlines()[2:] if line.startswith("|")
              and f"| {first.experiment} | {first.task} |" not in line]
    assert others and all("| 0 / " in line and line.endswith("| – |") for line in others
                          if f"| {first.task} |" not in line)


def test_progress_minutes_come_from_runs_of_the_same_backbone():
    grid = {**GRID, "experiments": GRID["experiments"] + [
        {"name": "big", "tasks": ["cb"], "seeds": [1], "methods": ["pt2"], "settings": {"model": "mpnet"}}]}
    records = [{**record("lr-sweep/cb-pt2-x1-s1", 70.0, 0.01), "model": "minilm", "seconds": 600.0},
               {**record("big/cb-pt2-s1", 80.0, 0.01, experiment="big"), "model": "mpnet", "seconds": 3000.0},
               # an early record keeps its backbone under settings only
               {**record("lr-sweep/cb-ft-x1-s1", 70.0, 2e-5, method="ft"), "settings": {"model": "minilm"},
                "seconds": 720.0}]
    table = R.progress_table(records, grid)
    assert "| big | cb | 1 / 1 | 50 |" in table
    # left: 2 pt2 sweep runs and 2 main pt2 runs (10 min each: pt2's median on minilm, not mpnet's 50), 2 ft sweep
    # runs and 2 main ft runs (12: ft's own), 2 pt2+ runs (none timed: minilm cb's median, 11): 110 min
    assert "10 runs left: about 1.8 CPU-hours" in table
    assert "| lr-sweep | cb | 2 / 6 | 11 |" in table and "| main | cb | 0 / 6 | 11 |" in table


def test_variant_table_can_show_the_last_epochs_training_loss():
    grid = {**GRID, "experiments": [{"name": "parity", "tasks": ["cb"], "seeds": [1, 2], "methods": ["pt2"],
                                     "variants": {"a": {}, "b": {}}}]}
    records = [record(f"parity/cb-pt2-{v}-s{s}", 70.0, 0.01, experiment="parity", variant=v, seed=s,
                      train_loss_by_epoch=[0.9, loss]) for v, s, loss in (("a", 1, 0.5), ("a", 2, 0.3), ("b", 1, 0.2))]
    records.append(record("parity/cb-pt2-b-s2", 70.0, 0.01, experiment="parity", variant="b", seed=2))  # no curve
    table = R.variant_table(records, "parity", R.planned_seeds(grid), final_train_loss=True)
    assert "| cb | pt2 | final train loss | 0.400 ± 0.141 | 0.200 (1/2) |" in table


def test_the_sweep_table_gives_dev_by_rate_and_the_rate_taken_with_its_edge():
    records = [record(f"lr-sweep/cb-pt2-{v}-s1", value, lr, variant=v)
               for v, value, lr in (("x0.5", 70.0, 0.005), ("x1", 72.0, 0.01), ("x2", 72.0, 0.02))]
    records.append(record("lr-sweep/cb-ft-x1-s1", 65.0, 2e-5, method="ft", variant="x1"))
    table = R.sweep_table(records, GRID)
    # a tie goes to the smaller rate, which the rule does not extend; the table says so
    assert "| cb | pt2 | 3 | 0.005: 70.0 · 0.01: 72.0 · 0.02: 72.0 | 0.01 | tied with highest |" in table
    assert "| cb | ft | 1 | 2e-05: 65.0 | sweep unfinished | – |" in table
    records[2]["dev_value"] = 75.0
    assert "| 0.02 | highest |" in R.sweep_table(records, GRID)
    records[2]["dev_value"] = 71.0
    assert "| 0.01 | no |" in R.sweep_table(records, GRID)
    table = R.sweep_table(records[:2] + records[3:], GRID, failed=["lr-sweep/cb-pt2-x2-s1"])
    assert "| cb | pt2 | 3 | 0.005: 70.0 · 0.01: 72.0 · 0.02: failed | 0.01 | no |" in table  # not at the edge


def test_by_task_finishes_one_tasks_sweep_and_main_runs_before_the_next_task(tmp_path, monkeypatch):
    grid = {**GRID, "tasks": {**GRID["tasks"], "rte": GRID["tasks"]["cb"]},
            "experiments": [{**e, "tasks": ["cb", "rte"]} for e in GRID["experiments"]]}
    monkeypatch.setattr(RUN, "load_grid", lambda: grid)
    monkeypatch.setattr(RUN, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(RUN, "_git", lambda *args: "abc")
    trained = []

    def train(run, settings):
        trained.append(run.run_id)
        (RUN.RUNS_DIR / run.run_id).mkdir(parents=True, exist_ok=True)
        return 1.0

    monkeypatch.setattr(RUN, "train_one", train)
    monkeypatch.setattr(RUN, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(RUN, "make_record", lambda run, settings, folder, seconds, commit: {
        **record(run.run_id, 70.0 + len(trained), settings["learning_rate"], experiment=run.experiment,
                 method=run.method, task=run.task, variant=run.variant, seed=run.seed)})
    monkeypatch.setattr(sys, "argv", ["run.py", "--by-task", "--task", "rte", "--task", "cb"])
    RUN.main()
    tasks = [run_id.split("/")[1].split("-")[0] for run_id in trained]
    assert tasks == sorted(tasks, key=["rte", "cb"].index)  # every rte run, sweep and main, before any cb run
    first_cb = tasks.index("cb")
    assert any(t.startswith("main/rte") for t in trained[:first_cb])


STOPPED_RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
import run
run.stop_on_sigterm()
run.run_child([sys.executable, "-c", "import time; print('training', flush=True); time.sleep(120)"])
"""


def test_killing_the_runner_stops_the_training_it_started():
    import signal
    import subprocess

    runner = subprocess.Popen([sys.executable, "-c", STOPPED_RUNNER, str(Path(RUN.__file__).parent)],
                              stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline().strip() == "training"
    child = next(int(line.split()[0]) for line in subprocess.run(["ps", "-o", "pid=,ppid=", "-A"], capture_output=True,
                                                                 text=True).stdout.splitlines()
                 if int(line.split()[1]) == runner.pid)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # gone, not orphaned (the runner waited for it, so it is reaped)
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)


def test_the_sweep_plot_is_drawn_from_sweep_records_only(tmp_path):
    grid = {**GRID, "experiments": [{**GRID["experiments"][0], "variants": {"lr-lo": {"lr_scale": 0.5}, "lr-mid": {}}},
                                    GRID["experiments"][1]]}
    png = tmp_path / "sweep.png"
    assert not R.plot_sweep([record("main/cb-pt2-s1", 70.0, 0.01, experiment="main")], grid, png)
    assert not png.exists()
    sweep = [record("lr-sweep/cb-pt2-lr-lo-s1", 70.0, 0.005, variant="lr-lo"),
             record("lr-sweep/cb-pt2-lr-mid-s1", 72.0, 0.01, variant="lr-mid")]
    assert R.plot_sweep(sweep, grid, png) and png.stat().st_size > 0


def test_the_readme_block_is_replaced_between_its_markers_only():
    text = "intro\n" + R.HEADLINE_START + "\nold table\n" + R.HEADLINE_END + "\nafter\n"
    assert R.replace_block(text, "new table\n") == ("intro\n" + R.HEADLINE_START + "\nnew table\n" + R.HEADLINE_END
                                                   + "\nafter\n")
    with pytest.raises(ValueError, match="expected one"):
        R.replace_block("no markers here", "table")
    assert R.HEADLINE_START in R.README.read_text()  # the project README carries the block report.py fills


def test_gates_are_recorded_once_their_run_is_and_from_the_folder_it_was_trained_in(tmp_path, monkeypatch):
    import gates as GATES

    grid = {**GRID, "gate_maps": ["main/cb-pt2-s1"],
            "experiments": [*GRID["experiments"],
                            {"name": "pt2-star", "tasks": ["cb"], "seeds": [1], "methods": ["pt2"],
                             "variants": {"half": {"prefix_lengths": {"from_gates": "main/{task}-apt-s1"}}}}]}
    assert G.gate_runs(grid) == ["main/cb-pt2-s1", "main/cb-apt-s1"]
    monkeypatch.setattr(G, "HERE", tmp_path)
    written = []
    monkeypatch.setattr(RUN, "write_gates", lambda run_id: written.append(run_id) or True)
    tried = set()
    RUN.record_missing_gates(grid, {"main/cb-apt-s1"}, commit=False, tried=tried)
    assert written == ["main/cb-apt-s1"]  # main/cb-pt2-s1 is not recorded yet
    RUN.record_missing_gates(grid, {"main/cb-apt-s1"}, commit=False, tried=tried)
    assert written == ["main/cb-apt-s1"]  # tried once a sitting, even when it wrote nothing
    G.gate_file("main/cb-pt2-s1").parent.mkdir(parents=True)
    G.gate_file("main/cb-pt2-s1").write_text("{}")
    RUN.record_missing_gates(grid, {"main/cb-pt2-s1"}, commit=False, tried=set())
    assert written == ["main/cb-apt-s1"]  # its gate file exists already
    records = [record("main/cb-apt-s1", 70.0, 0.02, experiment="main", method="apt",
                      reused_from="lr-sweep/cb-apt-x2-s1")]
    assert GATES.trained_folder("main/cb-apt-s1", records) == RUN.RUNS_DIR / "lr-sweep/cb-apt-x2-s1"
    assert GATES.trained_folder("main/cb-apt-s2", records) == RUN.RUNS_DIR / "main/cb-apt-s2"


def _ablation_plan():
    return {("main", "cb", m, ""): 3 for m in ("ft", "pt2", "apt")} | {("main", "copa", "apt", ""): 3} | {
        ("ablation", "cb", m, ""): 3 for m in ("token-gate", "pt2+")} | {("pt2-star", "cb", "pt2*", "half"): 3}


def test_the_ablation_table_sets_the_main_grids_pt2_and_apt_beside_it_on_its_own_tasks():
    values = {("main", "apt"): (76.8, 75.0, 73.2), ("main", "pt2"): (71.4, 73.2, 75.0), ("main", "ft"): (82.1,) * 3,
              ("ablation", "token-gate"): (75.0, 73.2)}  # seed 3 not in yet
    records = [record(f"{e}/cb-{m}-s{s}", v, 0.02, experiment=e, method=m, seed=s)
               for (e, m), vs in values.items() for s, v in zip((1, 2, 3), vs)]
    records.append(record("main/copa-apt-s1", 66.0, 0.02, experiment="main", method="apt", task="copa"))
    plan = _ablation_plan()
    assert R.with_references(records[:9], plan, "ablation") == ([], plan)  # no ablation run yet: nothing to show
    rows, merged_plan = R.with_references(records, plan, "ablation")
    assert {(r["experiment"], r["task"], r["method"]) for r in rows} == {
        ("ablation", "cb", m) for m in ("apt", "pt2", "token-gate")}  # not ft, not COPA (no ablation there)
    assert next(r for r in records if r["run_id"] == "main/cb-apt-s1")["experiment"] == "main"  # copies, not edits
    table = {line.split("|")[1].strip(): line for line in R.params_table(rows, "ablation", merged_plan).splitlines()}
    assert list(table)[2:] == ["pt2", "token-gate", "apt"]
    assert "| 75.0 ± 1.8 | 1,000 |" in table["apt"] and "| 74.1 ± 1.3 (2/3) | 1,000 |" in table["token-gate"]
    gap = R.margins(rows, "ablation", "apt", "token-gate", key="experiment", plan=merged_plan)
    assert "| cb | ablation | 2/3 | +1.8 | 0.0 | 2 / 0 / 0 |" in gap


def test_an_ablation_on_another_device_is_paired_with_references_retrained_there():
    gpu = {"versions": {"device": "NVIDIA H200"}}
    main = [record(f"main/cb-{m}-s{s}", v, 0.02, experiment="main", method=m, seed=s)
            for m, vs in (("apt", (78.6, 73.2)), ("pt2", (75.0, 75.0))) for s, v in zip((1, 2), vs)]
    arms = [{**record(f"ablation/cb-token-gate-s{s}", v, 0.02, experiment="ablation", method="token-gate", seed=s),
             **gpu} for s, v in ((1, 75.0), (2, 73.2))]
    again = [{**record(f"main/cb-apt-s{s}", v, 0.02, experiment="main", method="apt", seed=s), **gpu}
             for s, v in ((1, 76.8), (2, 75.0))]
    rows, plan = R.with_references(main + arms, _ablation_plan(), "ablation", retrained=again)
    by = {(r["method"], r["seed"]): r["value"] for r in rows}
    assert by[("apt", 1)] == 76.8 and by[("apt", 2)] == 75.0, "APT retrained on the arms' GPU"
    assert by[("pt2", 1)] == 75.0, "no pt2 retrained there: the main grid's, as before"
    assert "| cb | ablation | 2/3 | +1.8 | 0.0 | 2 / 0 / 0 |" in R.margins(rows, "ablation", "apt", "token-gate",
                                                                     key="experiment", plan=plan)
    assert R.cross_device_note(rows) == ("Paired across devices (no retrain on the runs' device yet: `python "
                                         "benchmarks/reproduce/run.py --retrain RUN_ID` there): `main/cb-pt2-s1`, "
                                         "`main/cb-pt2-s2`.\n")
    # arms on the main grid's own device keep the main grid's runs, whatever was retrained elsewhere
    cpu_arms = [{**a, "versions": {"device": "cpu"}} for a in arms]
    rows, _ = R.with_references(main + cpu_arms, _ablation_plan(), "ablation", retrained=again)
    assert {(r["method"], r["seed"]): r["value"] for r in rows}[("apt", 1)] == 78.6 and not R.cross_device_note(rows)
    # a retrain on another GPU is no reference for arms on this one; a retrain of the run a record reuses is
    elsewhere = [{**a, "versions": {"device": "NVIDIA A100"}} for a in again]
    reused = [{**m, "reused_from": m["run_id"].replace("main/", "lr-sweep/")} for m in main]
    of_sweep = [{**again[0], "run_id": "lr-sweep/cb-apt-s1"}]
    rows, _ = R.with_references(reused + arms, _ablation_plan(), "ablation", retrained=elsewhere + of_sweep)
    by = {(r["method"], r["seed"]): r for r in rows}
    assert by[("apt", 1)]["value"] == 76.8 and by[("apt", 2)]["value"] == 73.2 and by[("apt", 2)]["other_device"]


def test_the_reports_ablation_section_takes_references_retrained_on_the_arms_device(tmp_path):
    gpu = {"versions": {"device": "NVIDIA H200"}}
    grid = {**GRID, "experiments": [*GRID["experiments"], {
        "name": "ablation", "tasks": ["cb"], "seeds": [1, 2],
        "methods": [{"name": "token-gate", "method": "token-gate", "settings": {"learning_rate": 0.02}}]}]}
    records = [record(f"main/cb-{m}-s{s}", v, 0.02, experiment="main", method=m, seed=s)
               for m, vs in (("pt2", (71.4, 73.2)), ("apt", (78.6, 75.0))) for s, v in zip((1, 2), vs)]
    records += [{**record(f"ablation/cb-token-gate-s{s}", v, 0.02, experiment="ablation", method="token-gate",
                          seed=s), **gpu} for s, v in ((1, 75.0), (2, 73.2))]
    again = [{**record(f"main/cb-apt-s{s}", v, 0.02, experiment="main", method="apt", seed=s), **gpu}
             for s, v in ((1, 76.8), (2, 75.0))]
    report = R.build_report(records, grid, plots=tmp_path, retrained=again)
    section = report[report.index("## 3. Ablations"):report.index("## 4. Low-resource")]
    assert "| cb | ablation | 2 | +1.8 | 0.0 | 2 / 0 / 0 | +1.8 (1 seed) |" in section  # apt − token-gate, H200's
    assert "`main/cb-pt2-s1`, `main/cb-pt2-s2`" in section  # pt2 has no H200 retrain: named, not hidden
    assert "| main/cb-apt-s1 | cpu | 78.6 | NVIDIA H200 | 76.8 | -1.8 |" in report[report.index("## 8. Device"):]


def test_the_device_check_sets_each_retrained_run_beside_its_original():
    gpu = {"versions": {"device": "NVIDIA H200"}}
    main = [record(f"main/cb-apt-s{s}", v, 0.02, experiment="main", method="apt", seed=s)
            for s, v in ((1, 78.6), (2, 73.2))]
    again = [{**record(f"main/cb-apt-s{s}", v, 0.02, experiment="main", method="apt", seed=s), **gpu}
             for s, v in ((1, 76.8), (2, 75.0))]
    text = R.device_check(main, again)
    assert "| main/cb-apt-s1 | cpu | 78.6 | NVIDIA H200 | 76.8 | -1.8 |" in text
    assert "| main | cb | apt | cpu: 75.9 ± 3.8 | NVIDIA H200: 75.9 ± 1.3 | 1.8 |" in text
    assert "--retrain" in R.device_check(main, [])
    # retrained twice on one device: the last counts, once; a retrain of a run with no record is left out
    twice = [{**again[0], "value": 71.4}, *again, {**again[0], "run_id": "main/cb-apt-s9"}]
    assert R.device_check(main, twice) == text
    # a sweep run and the main record that reuses it, both retrained: one run, counted once
    sweep = record("lr-sweep/cb-apt-x2-s1", 78.6, 0.02, method="apt")
    reuse = {**main[0], "reused_from": sweep["run_id"]}
    both = R.device_check([sweep, reuse, main[1]], again + [{**again[0], "run_id": sweep["run_id"]}])
    assert sum(line.startswith("| ") and "cb-apt" in line for line in both.splitlines()) == 2
    another = [{**again[1], "versions": {"device": "NVIDIA A100"}}]
    assert "| main | cb | apt | cpu: 73.2 | NVIDIA A100: 75.0 | 1.8 |" in R.device_check(main, again + another)


def test_retrain_trains_a_recorded_run_again_into_its_own_records(tmp_path, monkeypatch, capsys):
    _fake_runner(monkeypatch, tmp_path, GRID, {})
    monkeypatch.setattr(RUN, "RETRAINED", tmp_path / "retrained.jsonl")
    monkeypatch.setattr(RUN, "_versions", lambda: {"device": "NVIDIA H200"})
    settings = {"task": "cb", "method": "pt2", "seed": 1, "learning_rate": 0.02}
    original = record("main/cb-pt2+-s1", 75.0, 0.02, experiment="main", method="pt2+", settings=settings)
    RUN.append_record(original, commit=False)
    trained = []

    def train(run, settings, run_dir=None):
        trained.append((run.run_id, run.train_method, settings, run_dir))
        return 1.0

    monkeypatch.setattr(RUN, "train_one", train)
    monkeypatch.setattr(RUN, "make_record", lambda run, settings, folder, seconds, commit: {
        **record(run.run_id, 71.4, settings["learning_rate"], experiment=run.experiment, method=run.method),
        "versions": RUN._versions()})
    monkeypatch.setattr(sys, "argv", ["run.py", "--retrain", "main/cb-pt2+-s1"])
    RUN.main()
    assert trained == [("main/cb-pt2+-s1", "pt2", settings,
                        tmp_path / "runs" / "retrained" / "NVIDIA-H200" / "main/cb-pt2+-s1")]
    assert [r["value"] for r in RUN.read_records(RUN.RETRAINED)] == [71.4]
    assert [r["value"] for r in RUN.read_records()] == [75.0], "the grid's own records stay as they were"
    RUN.main()  # already retrained on this device: not again
    assert len(trained) == 1
    monkeypatch.setattr(sys, "argv", ["run.py", "--retrain", "main/cb-apt-s9"])
    with pytest.raises(SystemExit, match="no record of main/cb-apt-s9"):
        RUN.main()
    monkeypatch.setattr(sys, "argv", ["run.py", "--retrain", "main/cb-pt2+-s1", "--task", "cb"])
    with pytest.raises(SystemExit) as refused:
        RUN.main()
    assert refused.value.code == 2 and "do not apply" in capsys.readouterr().err
    # on another device it trains again; a failure is named, and the runs after it still train
    RUN.append_record({**original, "run_id": "main/cb-pt2+-s2", "seed": 2}, commit=False)
    monkeypatch.setattr(RUN, "_versions", lambda: {"device": "NVIDIA A100"})

    def failing(run, settings, run_dir=None):
        if run.run_id.endswith("s1"):
            raise RUN.subprocess.CalledProcessError(1, ["adaprefix"])
        return train(run, settings, run_dir)

    monkeypatch.setattr(RUN, "train_one", failing)
    monkeypatch.setattr(sys, "argv", ["run.py", "--retrain", "main/cb-pt2+-s1", "--retrain", "main/cb-pt2+-s2"])
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed: main/cb-pt2\+-s1"):
        RUN.main()
    assert [(r["run_id"], r["versions"]["device"]) for r in RUN.read_records(RUN.RETRAINED)][1:] == [
        ("main/cb-pt2+-s2", "NVIDIA A100")]


def test_the_pt2_star_table_gives_each_methods_pseudo_tokens_per_layer_and_pairs_by_seed():
    records = [record(f"main/cb-{m}-s{s}", v, 0.02, experiment="main", method=m, seed=s, prefix_length=20,
                      trainable_params=p)
               for m, p, vs in (("pt2", 93315, (71.4, 73.2)), ("apt", 111849, (75.0, 76.8)))
               for s, v in zip((1, 2), vs)]
    records += [record(f"pt2-star/cb-pt2*-half-s{s}", v, 0.02, experiment="pt2-star", method="pt2*", variant="half",
                       seed=s, prefix_length=20, prefix_lengths=[4, 0, 6], trainable_params=48000)
                for s, v in ((1, 73.2), (2, 73.2))]
    rows, plan = R.with_references(records, _ablation_plan(), "pt2-star")
    assert plan[("pt2-star", "cb", "pt2*", "")] == 3  # PT-2*'s one variant dropped: its runs pair with main's
    with pytest.raises(ValueError, match="one variant only"):
        R.with_references(records, {**_ablation_plan(), ("pt2-star", "cb", "pt2*", "third"): 3}, "pt2-star")
    table = {line.split("|")[1].strip(): line for line in R.params_table(rows, "pt2-star", plan, lengths=True)
             .splitlines()}
    assert "| 73.2 ± 0.0 (2/3) | 48,000 | 4, 0, 6 (Σ 10) |" in table["pt2*"]
    assert "| 111,849 | 20 each (Σ 60) |" in table["apt"]  # depth from PT-2*'s list: 3 layers
    assert "cb pseudo tokens per layer" in R.params_table(rows, "pt2-star", plan, lengths=True)
    assert "| cb | pt2-star | 2/3 | +0.9 | 1.3 | 1 / 1 / 0 |" in R.margins(rows, "pt2-star", "pt2*", "pt2",
                                                                          key="experiment", plan=plan)


def test_the_low_resource_plot_is_drawn_per_task_from_its_own_records(tmp_path):
    png = tmp_path / "low.png"
    assert not R.plot_low_resource([record("main/cb-pt2-s1", 70.0, 0.01, experiment="main")], png)
    assert not png.exists()
    records = [record(f"low-resource/wic-{m}-n{n}-s{s}", 50.0 + s + (m == "apt"), 1e-4, experiment="low-resource",
                      task="wic", method=m, variant=f"n{n}", seed=s, train_examples=n, train_examples_full=5428)
               for m in ("pt2", "apt") for n in (32, 128) for s in (1, 2)]
    assert R.plot_low_resource(records, png) and png.stat().st_size > 0
    plan = {("low-resource", "wic", m, f"n{n}"): 3 for m in ("pt2", "apt") for n in (32, 128)}
    gap = R.margins(records, "low-resource", "apt", "pt2", plan=plan)
    assert "| wic | n128 | 2/3 | +1.0 | 0.0 | 2 / 0 / 0 |" in gap
    assert gap.index("| wic | n32 |") < gap.index("| wic | n128 |")  # the grid's order, not the string order


def test_full_data_runs_end_the_low_resource_lines_of_their_own_tasks_only(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(R, "save_figure", lambda fig, path: drawn.append(fig) or True)
    low = [record(f"low-resource/wic-pt2-n{n}-s{s}", 50.0 + s, 1e-4, experiment="low-resource", task="wic",
                  variant=f"n{n}", seed=s, train_examples=n, train_examples_full=5428) for n in (32, 128) for s in (1, 2)]
    full = [record(f"full-data/{t}-pt2-s{s}", 60.0 + s, 1e-4, experiment="full-data", task=t, seed=s,
                   train_examples=n, train_examples_full=n) for t, n in (("wic", 5428), ("rte", 2490)) for s in (1, 2)]
    assert R.plot_low_resource(low + full, tmp_path / "low.png")
    (ax,) = drawn[0].axes  # one panel: rte has no low-resource runs
    line = ax.lines[0]
    assert list(line.get_xdata()) == [32, 128, 5428] and list(line.get_ydata()) == [51.5, 51.5, 61.5]
    assert not R.plot_low_resource(full, tmp_path / "none.png")  # full-data alone is no learning curve


def test_the_report_gives_full_data_its_table_and_pairs(tmp_path):
    grid = {**GRID, "experiments": [*GRID["experiments"], {
        "name": "full-data", "tasks": ["cb"], "seeds": [1, 2, 3], "methods": ["pt2", "apt", "ft"]}]}
    records = [record(f"full-data/cb-{m}-s{s}", v, 0.01, experiment="full-data", method=m, seed=s)
               for m, vs in (("pt2", (57.7, 58.9, 57.8)), ("apt", (59.1, 59.1, 59.2)), ("ft", (63.5, 61.4))) for s, v
               in zip((1, 2, 3), vs)]
    report = R.build_report(records, grid, plots=tmp_path)
    section = report[report.index("### On the full training sets"):report.index("## 5. PT-2*")]
    assert "| apt | 59.1 ± 0.1 |" in section and "| ft | 62.5 ± 1.5 (2/3) |" in section
    assert "| cb | full-data | 3 | +1.0 | 0.7 | 3 / 0 / 0 |" in section  # apt − pt2, paired
    assert "| cb | full-data | 2/3 | -3.4 | 1.5 | 0 / 0 / 2 |" in section  # apt − ft over the seeds ft has


def test_a_margin_that_rounds_to_zero_is_never_negative_zero():
    records = [record(f"main/cb-{m}-s{s}", v, 0.01, experiment="main", method=m, seed=s)
               for m, vs in (("apt", (75.0, 71.4, 73.2)), ("pt2", (73.2, 73.2, 73.3))) for s, v in zip((1, 2, 3), vs)]
    assert "| cb | main | 3 | +0.0 | 1.8 | 1 / 0 / 2 |" in R.margins(records, "main", "apt", "pt2", key="experiment")


def test_the_report_sets_main_runs_beside_the_ablation_and_leaves_out_the_selection_seed(tmp_path):
    grid = {**GRID, "experiments": [*GRID["experiments"], {
        "name": "ablation", "tasks": ["cb"], "seeds": [1, 2],
        "methods": [{"name": "token-gate", "method": "token-gate", "settings": {"learning_rate": 0.02}}]}]}
    records = [record(f"{e}/cb-{m}-s{s}", v, 0.02, experiment=e, method=m, seed=s)
               for e, m, vs in (("main", "pt2", (71.4, 73.2)), ("main", "ft", (82.1, 80.4)),
                                ("main", "apt", (78.6, 75.0)),
                                ("ablation", "token-gate", (75.0, 76.8))) for s, v in zip((1, 2), vs)]
    report = R.build_report(records, grid, plots=tmp_path)
    section = report[report.index("## 3. Ablations"):report.index("## 4. Low-resource")]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    assert rows[:3] == ["pt2", "token-gate", "apt"] and "ft" not in rows  # main's pt2 and apt beside it, not ft
    assert "| cb | ablation | 2 | +0.9 | 3.8 | 1 / 0 / 1 | -1.8 (1 seed) |" in section  # apt − token-gate


def test_report_main_reads_the_retrains_beside_the_records(tmp_path, monkeypatch):
    gpu = {"versions": {"device": "NVIDIA H200"}}
    monkeypatch.setattr(RUN, "RECORDS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(R, "FAILURES", tmp_path / "failures.jsonl")
    monkeypatch.setattr(R, "RETRAINED", tmp_path / "retrained.jsonl")
    monkeypatch.setattr(R, "REPORT", tmp_path / "report.md")
    monkeypatch.setattr(R, "README", tmp_path / "README.md")
    monkeypatch.setattr(R, "PLOTS", tmp_path)
    monkeypatch.setattr(R, "load_grid", lambda: GRID)
    (tmp_path / "README.md").write_text(f"intro\n{R.HEADLINE_START}\nold\n{R.HEADLINE_END}\n")
    RUN.append_record(record("main/cb-apt-s1", 78.6, 0.02, experiment="main", method="apt"), commit=False)
    RUN.append_record({**record("main/cb-apt-s1", 76.8, 0.02, experiment="main", method="apt"), **gpu}, commit=False,
                      target=R.RETRAINED)
    R.main()
    assert "| main/cb-apt-s1 | cpu | 78.6 | NVIDIA H200 | 76.8 | -1.8 |" in (tmp_path / "report.md").read_text()
    assert "old" not in (tmp_path / "README.md").read_text()
