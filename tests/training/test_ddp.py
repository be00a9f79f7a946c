"""Data-parallel training: two CPU processes (gloo) under torchrun end with identical parameters."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from run_helpers import tiny_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(settings, out, *flags):
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(worker), json.dumps(settings), str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_ddp_ranks_agree(tiny_backbone, sentiment_files, tmp_path):
    settings = tiny_settings(tiny_backbone, sentiment_files, tmp_path / "run", epochs=2)
    _run_two_processes(settings, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    # 16 examples / (2 ranks x batch 4) = 2 steps per epoch: each rank saw half the data.
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4
    assert ranks[0]["params"] == ranks[1]["params"]
    assert (tmp_path / "run" / "final_metrics.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2], "one record per epoch, written by rank 0 only"


def test_the_main_process_decides_for_all_ranks_whether_test_is_scored(tiny_backbone, sentiment_files, tmp_path):
    settings = tiny_settings(tiny_backbone, sentiment_files, tmp_path / "run", epochs=2,
                             test_file=sentiment_files["dev_file"])
    _run_two_processes(settings, tmp_path, "rank1-never-wants-test")  # disagreeing ranks would hang or fail here
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "test_accuracy" in first  # the first epoch always improves: rank 0 wants its test score, so both score it
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["test"]
