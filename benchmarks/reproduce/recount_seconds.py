"""Recount the wall time of recorded runs that were resumed before the recipe counted time across sittings.

    python benchmarks/reproduce/recount_seconds.py            # show what would change
    python benchmarks/reproduce/recount_seconds.py --write    # rewrite results/runs.jsonl with the recounts

Until `metrics.jsonl` carried `elapsed_seconds`, a resumed run's record counted its last sitting only (e.g. 200 s
for a run that trained 500 s). Each sitting of a run opened its own TensorBoard event file in `<run>/tb/`, and
every epoch's evaluation there carries its wall time, so the work each earlier sitting kept can be measured: from
the file's first event (training starts, the model already built) to its last evaluation that no later sitting
redid (a later sitting resumed from the checkpoint after it). The recount is that kept time of the earlier sittings
plus the recorded last sitting, the wall time an uninterrupted run would have taken; the record keeps the last
sitting's count as `seconds_last_sitting` and says `seconds_source: "tensorboard"`. Not seen by TensorBoard, so not
counted: an earlier sitting's checkpoint saves, and a generation task's exact-match scoring (it runs after the
evaluation is logged). Records that need no recount (not resumed, or counted across sittings already) and runs
whose folder is not on this machine are left as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from run import RECORDS, RUNS_DIR, read_records  # noqa: E402

def sittings(tb_dir: Path) -> list[tuple[float, dict[int, float]]]:
    """Each event file in ``tb_dir`` in the order they were opened: its first event's wall time, and for each step
    evaluated, when its last evaluation (dev, then test for NER) was logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for path in tb_dir.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        evaluated: dict[int, float] = {}
        for tag in events.Tags()["scalars"]:
            if tag.startswith("eval/"):
                for e in events.Scalars(tag):
                    evaluated[e.step] = max(e.wall_time, evaluated.get(e.step, e.wall_time))
        found.append((events.FirstEventTimestamp(), evaluated))
    return sorted(found, key=lambda sitting: sitting[0])


def earlier_sittings_seconds(tb_dir: Path) -> float | None:
    """The wall time the sittings before the last one kept (None: fewer than two sittings to count)."""
    opened = sittings(tb_dir)
    if len(opened) < 2:
        return None
    total = 0.0
    for i, (start, evaluated) in enumerate(opened[:-1]):
        # Any later sitting (not only the next: that one may have died before its first evaluation) that evaluated
        # a step resumed from the checkpoint before it, so this sitting's evaluations from there on were redone.
        redone_from = min((step for _, later in opened[i + 1:] for step in later), default=float("inf"))
        kept = [wall for step, wall in evaluated.items() if step < redone_from]
        total += max(kept) - start if kept else 0.0
    return total


def recount(record: dict[str, Any], runs_dir: Path) -> dict[str, Any] | None:
    """``record`` with its seconds counted across sittings, or None when it needs (or allows) no recount."""
    if record.get("reused_from") or "seconds_source" in record:
        return None
    folder = runs_dir / record["run_id"]
    final_file = folder / "final_metrics.json"
    if not final_file.is_file():
        return None
    final = json.loads(final_file.read_text())
    if not final.get("resumed") or ("sitting_seconds" in final and not final.get("train_seconds_partial")):
        return None
    earlier = earlier_sittings_seconds(folder / "tb")
    if earlier is None:
        return None
    # A run resumed from untimed epochs (train_seconds_partial) already counts the timed sittings since: only its
    # last sitting is taken from the record, the rest from TensorBoard.
    last = record["seconds"] - (final["train_seconds"] - final["sitting_seconds"] if "sitting_seconds" in final else 0)
    recounted = {**record, "seconds": round(earlier + last, 1), "seconds_last_sitting": round(last, 1),
                 "seconds_source": "tensorboard"}
    recounted.pop("seconds_partial", None)
    return recounted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="Rewrite results/runs.jsonl with the recounts.")
    args = parser.parse_args()
    before = RECORDS.read_bytes()
    records = read_records()
    changed = 0
    for i, record in enumerate(records):
        new = recount(record, RUNS_DIR)
        if new is not None:
            print(f"{record['run_id']}: {record['seconds']:.0f} s (last sitting) -> {new['seconds']:.0f} s")
            records[i], changed = new, changed + 1
    if args.write and changed:
        from adaprefix.files import atomic_write_text

        if RECORDS.read_bytes() != before:  # a runner recorded a run meanwhile: its line must not be lost
            raise SystemExit(f"{RECORDS} changed while recounting (a runner recorded a run); nothing written, "
                             "run this again")
        atomic_write_text(RECORDS, "".join(json.dumps(r) + "\n" for r in records))
    print(f"{changed} record(s) recounted" + ("" if args.write or not changed else "; --write to save"))


if __name__ == "__main__":
    main()
