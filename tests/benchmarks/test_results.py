"""Committed results can be regenerated and name no machine: every plot redraws from its committed JSON with the
command written beside it, and no result file holds an absolute path of the machine that made it."""

import json
import re
import struct
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS / "reproduce"))
import grid as G  # noqa: E402
import report as R  # noqa: E402
from script_helpers import load_script  # noqa: E402

PNGS = sorted(BENCHMARKS.rglob("*.png"))
RESULT_FILES = sorted(p for p in BENCHMARKS.rglob("*") if p.suffix in (".json", ".jsonl", ".md", ".txt")
                      and ("results" in p.relative_to(BENCHMARKS).parts or p.name == "report.md"))
ABSOLUTE = re.compile(r"(?<![\w.])(/work/|/home/|/tmp/|/root/|/Users/|/private/|/mnt/|[A-Z]:\\\\)")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def redraw(png: Path, out: Path) -> Path:
    """Redraw one committed plot into ``out`` with the command its README names; the redrawn file's path."""
    where = png.relative_to(BENCHMARKS)
    if where.parts[:2] == ("compare", "results"):  # benchmarks/compare/README.md: plot.py results/<name>.json
        plot = load_script(BENCHMARKS / "compare" / "plot.py", "compare_plot")
        plot.main([str(png.with_suffix(".json")), "--out-dir", str(out)])
        return out / png.name
    if where.parts[:2] == ("reproduce", "results"):  # benchmarks/reproduce/README.md: report.py
        lines = (BENCHMARKS / "reproduce" / "results" / "runs.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        R.build_report(records, G.load_grid(), plots=out)
        return out / where.relative_to("reproduce/results")
    if where.parts[:2] == ("pruning", "results"):  # benchmarks/pruning/prune_curve.py with no run: redraws
        curve = load_script(BENCHMARKS / "pruning" / "prune_curve.py", "prune_curve")
        curve.plot(json.loads(png.with_suffix(".json").read_text()), out / png.name)
        return out / png.name
    if where.parts[:2] == ("decoder", "results"):  # benchmarks/decoder/report.py, from results/runs.jsonl
        report = load_script(BENCHMARKS / "decoder" / "report.py", "decoder_report")
        report.markdown(report.read_records(), curves=out / png.name)
        return out / png.name
    raise AssertionError(f"{where}: no command redraws this plot from committed JSON; add one (and to this test)")


@pytest.mark.parametrize("png", PNGS, ids=[str(p.relative_to(BENCHMARKS)) for p in PNGS])
def test_every_committed_plot_redraws_from_its_json(png, tmp_path):
    redrawn = redraw(png, tmp_path)
    assert redrawn.is_file(), f"{png.relative_to(BENCHMARKS)} was not redrawn"
    assert png_size(redrawn)[0] > 0
    if png.parts[-3] == "compare":  # a fixed JSON: the very same figure; reproduce's grows as runs are recorded
        assert png_size(redrawn) == png_size(png)


def test_a_comparison_table_redraws_from_its_json_unchanged(tmp_path):
    for source in sorted((BENCHMARKS / "compare" / "results").glob("*.json")):
        from adaprefix.analysis.compare import write_outputs

        markdown, _ = write_outputs(source, tmp_path)
        assert markdown.read_text() == source.with_suffix(".md").read_text(), source.name


def test_there_are_results_to_check():
    assert len(PNGS) >= 4 and any(p.name == "runs.jsonl" for p in RESULT_FILES)
    assert any(p.suffix == ".json" and "speed" in p.parts for p in RESULT_FILES)


@pytest.mark.parametrize("path", RESULT_FILES, ids=[str(p.relative_to(BENCHMARKS)) for p in RESULT_FILES])
def test_no_committed_result_names_an_absolute_machine_path(path):
    hits = [f"{n}: {line.strip()[:120]}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if ABSOLUTE.search(line)]
    assert not hits, f"{path.relative_to(BENCHMARKS)} holds absolute paths:\n" + "\n".join(hits)


def test_every_script_that_writes_a_json_result_records_run_metadata():
    # run.py's records carry their own commit, versions and date (one line per run, read back by the grid);
    # recount_seconds.py rewrites those records' seconds and keeps the rest as it was
    # runner_files.py appends the records its callers make (theirs carry the metadata)
    own_format = {BENCHMARKS / "reproduce" / "run.py", BENCHMARKS / "reproduce" / "recount_seconds.py",
                  BENCHMARKS / "runner_files.py"}
    writers = [p for p in sorted(BENCHMARKS.rglob("*.py")) if "json.dumps" in p.read_text() and p not in own_format]
    assert len(writers) >= 6
    assert [p.name for p in writers if "run_metadata(" not in p.read_text()] == []
