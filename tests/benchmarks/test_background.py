"""benchmarks/background.sh: its usage, and a status that names each runner whether or not it runs."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "background.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_an_unknown_command_prints_the_usage():
    done = _run("restart")
    assert done.returncode == 2 and "usage: benchmarks/background.sh start|status|pause|resume|stop" in done.stderr


def test_status_lists_a_runner_by_its_script_and_its_training_children(tmp_path):
    """A stand-in runner: a python process whose arguments name the decoder grid, with a child of its own."""
    import sys
    import time

    child_file = tmp_path / "child"
    (tmp_path / "stand_in.py").write_text(
        "import pathlib, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(child_file)!r}).write_text(str(child.pid))\n"
        "time.sleep(60)\n")
    runner = subprocess.Popen([sys.executable, str(tmp_path / "stand_in.py"), "benchmarks/decoder/grid.py"])
    try:
        deadline = time.time() + 30
        while not child_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        child = child_file.read_text()
        done = _run("status")
        assert done.returncode == 0, done.stderr
        listed = {line.split()[0] for line in done.stdout.splitlines() if line.split() and line.split()[0].isdigit()}
        assert {str(runner.pid), child} <= listed
    finally:
        if child_file.exists():
            subprocess.run(["kill", child_file.read_text()])
        runner.kill()
