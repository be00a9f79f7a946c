"""benchmarks/background.sh: its usage, and a status that names each runner whether or not it runs."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "background.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_an_unknown_command_prints_the_usage():
    done = _run("restart")
    assert done.returncode == 2 and "usage: benchmarks/background.sh start|status|pause|resume|stop" in done.stderr


def test_status_accounts_for_both_runners():
    done = _run("status")
    assert done.returncode == 0, done.stderr
    for runner, script in (("encoder", "benchmarks/reproduce/run.py"), ("decoder", "benchmarks/decoder/grid.py")):
        assert f"{runner}: not running" in done.stdout or script in done.stdout
