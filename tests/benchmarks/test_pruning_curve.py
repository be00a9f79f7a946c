"""benchmarks/pruning/prune_curve.py: the thresholds that keep given shares of a run's pseudo tokens."""

from pathlib import Path

from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pruning" / "prune_curve.py"
CURVE = load_script(SCRIPT, "prune_curve")


def kept(max_gates, threshold):
    return sum(g > threshold for row in max_gates for g in row if g >= 0)


def test_each_threshold_keeps_its_share_of_the_tokens():
    gates = [[0.9, 0.8, 0.7, 0.6, 0.5], [0.4, 0.3, 0.2, 0.1, 0.0]]
    thresholds = CURVE.thresholds_keeping(gates, shares=(0.9, 0.5, 0.1))
    assert sorted(kept(gates, t) for t in thresholds) == [1, 5, 9]


def test_padding_slots_are_not_tokens_and_shares_that_keep_all_or_none_are_skipped():
    gates = [[0.5, 0.4, -1.0, -1.0], [0.3, 0.2, 0.1, -1.0]]  # per-layer lengths 2 and 3
    thresholds = CURVE.thresholds_keeping(gates, shares=(1.0, 0.6, 0.0))
    assert [kept(gates, t) for t in thresholds] == [3]
