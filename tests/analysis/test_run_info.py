"""Run metadata: the one record of where a committed result came from."""

import re
import subprocess
from pathlib import Path

from adaprefix.analysis.run_info import command_line, describe, git_commit, machine_metadata, repo_root, run_metadata

REPO = Path(__file__).resolve().parents[2]


def test_metadata_names_command_date_commit_and_versions():
    script = REPO / "benchmarks" / "speed" / "bench_step.py"
    meta = run_metadata(packages=("pytest", "no-such-package-xyz"),
                        argv=[str(script), "--out-dir", str(REPO / "benchmarks" / "x"), "--steps", "3"])
    assert meta["command"] == "python benchmarks/speed/bench_step.py --out-dir benchmarks/x --steps 3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", meta["date"])
    assert re.fullmatch(r"[0-9a-f]{40}(\+uncommitted-changes)?", meta["commit"])
    assert meta["torch"] and meta["transformers"] and meta["python"] and meta["adaprefix"]
    assert meta["pytest"] and meta["no-such-package-xyz"] is None
    assert str(REPO) not in str(meta)
    assert meta["commit"][:7] in describe(meta) and f"torch {meta['torch']}" in describe(meta)


def test_outside_a_repository_the_commit_is_unknown_and_paths_stay_as_given(tmp_path):
    assert repo_root(tmp_path) is None
    assert git_commit(None) == "unknown"
    assert command_line(["/elsewhere/script.py", "-x"], None) == "python /elsewhere/script.py -x"
    assert run_metadata(argv=[str(tmp_path / "s.py")], repo=tmp_path)["commit"] == "unknown"


def test_uncommitted_code_is_flagged_but_a_rewritten_result_is_not(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "x" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "x" / "run.py").write_text("print(1)\n")
    (tmp_path / "benchmarks" / "x" / "results" / "r.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert repo_root(tmp_path / "benchmarks" / "x" / "run.py") == tmp_path.resolve()
    assert not git_commit(tmp_path).endswith("+uncommitted-changes")
    (tmp_path / "benchmarks" / "x" / "results" / "r.json").write_text('{"a": 1}\n')
    assert not git_commit(tmp_path).endswith("+uncommitted-changes")
    (tmp_path / "benchmarks" / "x" / "run.py").write_text("print(2)\n")
    assert git_commit(tmp_path).endswith("+uncommitted-changes")


def test_machine_metadata_names_threads_cpu_and_cores():
    machine = machine_metadata()
    assert machine["threads"] >= 1 and machine["cores_available"] >= 1 and machine["cpu"]
