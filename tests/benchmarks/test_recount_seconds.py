"""Recounting a resumed run's wall time from the TensorBoard event files its sittings left."""

import json
import sys
import time
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks" / "reproduce"))
import recount_seconds as RS  # noqa: E402


def write_sitting(tb_dir, monkeypatch, opened, evals, test_after=None):
    """An event file as one sitting of the recipe leaves it: opened at ``opened``, one dev evaluation per
    (step, wall time) in ``evals``, and where ``test_after`` is given, the test set scored that many seconds later
    (NER)."""
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: opened)  # the writer stamps its first event (and file name) with it
        writer = SummaryWriter(log_dir=str(tb_dir))
    for step, wall in evals:
        writer.add_scalar("train/loss", 0.7, step, walltime=wall - 1)
        writer.add_scalar("eval/dev_loss", 0.5, step, walltime=wall)
        if test_after is not None:
            writer.add_scalar("eval/test_f1", 0.5, step, walltime=wall + test_after)
    writer.close()


def make_run(runs_dir, run_id, final, sittings_written, monkeypatch, seconds=50.0, test_after=None):
    folder = runs_dir / run_id
    folder.mkdir(parents=True)
    (folder / "final_metrics.json").write_text(json.dumps(final))
    for opened, evals in sittings_written:
        write_sitting(folder / "tb", monkeypatch, opened, evals, test_after)
    return {"run_id": run_id, "seconds": seconds, "value": 70.0}


def test_a_resumed_run_counts_what_each_earlier_sitting_kept(tmp_path, monkeypatch):
    record = make_run(tmp_path, "main/cb-apt-s1", {"resumed": True, "train_seconds": 45.0}, [
        (1000.0, [(10, 1010.0), (20, 1020.0), (30, 1031.0)]),  # killed after epoch 3's eval, before its checkpoint
        (2000.0, [(30, 2012.0)]),  # resumed from step 20, killed again after its checkpoint at 30
        (3000.0, [(40, 3010.0)]),  # the last sitting: the record's 50 s
    ], monkeypatch)
    new = RS.recount(record, tmp_path)
    # sitting 1 kept up to step 20 (20 s), sitting 2 up to step 30 (12 s), sitting 3 as recorded (50 s)
    assert new["seconds"] == pytest.approx(20.0 + 12.0 + 50.0)
    assert new["seconds_last_sitting"] == 50.0 and new["seconds_source"] == "tensorboard"
    assert new["value"] == 70.0
    assert RS.recount(new, tmp_path) is None, "a recount is never applied twice"


def test_a_sitting_killed_before_its_first_evaluation_adds_nothing(tmp_path, monkeypatch):
    record = make_run(tmp_path, "r", {"resumed": True}, [(1000.0, []), (2000.0, [(10, 2010.0)])], monkeypatch)
    assert RS.recount(record, tmp_path)["seconds"] == pytest.approx(50.0)


def test_work_redone_after_a_sitting_without_evaluations_is_not_counted_twice(tmp_path, monkeypatch):
    record = make_run(tmp_path, "r", {"resumed": True}, [
        (1000.0, [(10, 1010.0), (20, 1020.0), (30, 1030.0)]),  # killed after epoch 3's eval, before its checkpoint
        (2000.0, []),  # resumed from step 20, killed before its first evaluation
        (3000.0, [(30, 3010.0)]),  # resumed from step 20 again: step 30 is redone here
    ], monkeypatch)
    assert RS.recount(record, tmp_path)["seconds"] == pytest.approx(20.0 + 0.0 + 50.0)


def test_an_epoch_ends_when_its_last_set_is_scored(tmp_path, monkeypatch):
    record = make_run(tmp_path, "r", {"resumed": True}, [(1000.0, [(10, 1010.0)]), (2000.0, [(20, 2010.0)])],
                      monkeypatch, test_after=3.0)  # NER: the test set scored 3 s after dev
    assert RS.recount(record, tmp_path)["seconds"] == pytest.approx(13.0 + 50.0)


@pytest.mark.parametrize("final", [
    {"resumed": False},  # one sitting: its count is the whole run
    {"resumed": True, "train_seconds": 45.0, "sitting_seconds": 20.0},  # counted across sittings by the recipe
])
def test_records_that_need_no_recount_are_left_alone(tmp_path, monkeypatch, final):
    record = make_run(tmp_path, "r", final, [(1000.0, [(10, 1010.0)]), (2000.0, [(10, 2010.0)])], monkeypatch)
    assert RS.recount(record, tmp_path) is None


def test_a_run_resumed_from_untimed_epochs_is_recounted_and_loses_its_partial_mark(tmp_path, monkeypatch):
    final = {"resumed": True, "train_seconds": 20.0, "sitting_seconds": 20.0, "train_seconds_partial": True}
    record = {**make_run(tmp_path, "r", final, [(1000.0, [(10, 1010.0)]), (2000.0, [(20, 2010.0)])], monkeypatch),
              "seconds_partial": True}
    new = RS.recount(record, tmp_path)
    assert new["seconds"] == pytest.approx(60.0) and "seconds_partial" not in new


def test_timed_sittings_after_untimed_ones_are_counted_once(tmp_path, monkeypatch):
    # Sitting 1 (an older recipe, untimed), sitting 2 (timed: 30 s kept), sitting 3 (20 s, plus 2 s starting the
    # process): the recipe counted 2 and 3 (train_seconds 50) but knew nothing of 1 (10 s kept).
    final = {"resumed": True, "train_seconds": 50.0, "sitting_seconds": 20.0, "train_seconds_partial": True}
    record = make_run(tmp_path, "r", final, [(1000.0, [(10, 1010.0)]), (2000.0, [(20, 2030.0)]),
                                             (3000.0, [(30, 3015.0)])], monkeypatch, seconds=52.0)
    new = RS.recount(record, tmp_path)
    assert new["seconds"] == pytest.approx(10.0 + 30.0 + 22.0) and new["seconds_last_sitting"] == 22.0


def test_reused_records_and_runs_missing_here_are_left_alone(tmp_path):
    assert RS.recount({"run_id": "main/cb-apt-s1", "seconds": 5.0, "reused_from": "x"}, tmp_path) is None
    assert RS.recount({"run_id": "not/here", "seconds": 5.0}, tmp_path) is None
