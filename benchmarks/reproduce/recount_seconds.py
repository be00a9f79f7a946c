"""Recount the wall time of recorded runs that were resumed before the recipe counted time across sittings.

    python benchmarks/reproduce/recount_seconds.py            # show what would change
    python benchmarks/reproduce/recount_seconds.py --write    # rewrite results/runs.jsonl with the recounts

Until `metrics.jsonl` carried `elapsed_seconds`, a resumed run's record counted its last sitting only (e.g. 200 s
for a run that trained 500 s). Each sitting of a run opened its own TensorBoard event file in `<run>/tb/`, and
every epoch's evaluation there carries its wall time, so the work each earlier sitting kept can be measured: from
the file's first event (training starts, the model already built) to the last evaluation the next sitting did not
redo (it resumed from the checkpoint after it). The recount is that kept time of the earlier sittings plus the
recorded last sitting, the wall time an uninterrupted run would have taken; the record keeps the last sitting's
count as `seconds_last_sitting` and says `seconds_source: "tensorboard"`. Records that need no recount (not
resumed, or counted across sittings already) and runs whose folder is not on this machine are left as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from run import RECORDS, RUNS_DIR, read_records  # noqa: E402

DEV_LOSS = "eval/dev_loss"  # every task's evaluation logs it, once per epoch


def sittings(tb_dir: Path) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each event file in ``tb_dir`` in the order they were opened: its first event's wall time and its
    (step, wall time) evaluations."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for path in tb_dir.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        evals = [(e.step, e.wall_time) for e in events.Scalars(DEV_LOSS)] if DEV_LOSS in events.Tags()["scalars"] \
            else []
        found.append((events.FirstEventTimestamp(), evals))
    return sorted(found)


def earlier_sittings_seconds(tb_dir: Path) -> float | None:
    """The wall time the sittings before the last one kept (None: fewer than two sittings to count)."""
    opened = sittings(tb_dir)
    if len(opened) < 2:
        return None
    total = 0.0
    for (start, evals), (_, next_evals) in zip(opened, opened[1:]):
        resumed_at = min((step for step, _ in next_evals), default=float("inf"))
        kept = [wall for step, wall in evals if step < resumed_at]  # later ones were redone by the next sitting
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
    last = record["seconds"]
    recounted = {**record, "seconds": round(earlier + last, 1), "seconds_last_sitting": last,
                 "seconds_source": "tensorboard"}
    recounted.pop("seconds_partial", None)
    return recounted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="Rewrite results/runs.jsonl with the recounts.")
    args = parser.parse_args()
    records = read_records()
    changed = 0
    for i, record in enumerate(records):
        new = recount(record, RUNS_DIR)
        if new is not None:
            print(f"{record['run_id']}: {record['seconds']:.0f} s (last sitting) -> {new['seconds']:.0f} s")
            records[i], changed = new, changed + 1
    if args.write and changed:
        from adaprefix.files import atomic_write_text

        atomic_write_text(RECORDS, "".join(json.dumps(r) + "\n" for r in records))
    print(f"{changed} record(s) recounted" + ("" if args.write or not changed else "; --write to save"))


if __name__ == "__main__":
    main()
