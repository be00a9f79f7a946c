"""What the `adaprefix serve` tests share: three runs trained on the tiny backbone, and a real uvicorn server."""

import contextlib
import json
import socket
import threading
import time

from typer.testing import CliRunner

from adaprefix.cli import app as cli
from run_helpers import CONLL04, SENTIMENT

runner = CliRunner()
TOPICS = [("the striker scored twice", "sport"), ("shares fell on Monday", "money"), ("a new vaccine trial", "health"),
          ("the keeper saved a penalty", "sport"), ("interest rates rose again", "money"),
          ("doctors warn about flu", "health")]


def train(settings: dict) -> None:
    args = [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    result = runner.invoke(cli, ["train", "--quiet", *args])
    assert result.exit_code == 0, result.output


def train_runs(root, backbone) -> dict:
    """A 2-label sentiment run (apt), a 3-label topic run (pt2, another prefix length), a CoNLL04 tagging run
    (another head class, apt with exact gates) and a sentiment run with separate gates, all with max_length 16."""
    def jsonl(name, rows):
        path = root / name
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
        return str(path)

    conll = root / "data" / "conll04"
    conll.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (conll / f"{split}.txt").write_text(CONLL04 * 2)
    common = {"model": backbone, "epochs": 1, "batch_size": 4, "max_length": 16, "learning_rate": 0.05}
    train({**common, "task": "custom", "train_file": jsonl("s.jsonl", SENTIMENT * 2), "dev_file": jsonl(
        "sd.jsonl", SENTIMENT), "output_dir": root / "sentiment", "prefix_length": 4})
    train({**common, "task": "custom", "train_file": jsonl("t.jsonl", TOPICS * 2), "dev_file": jsonl(
        "td.jsonl", TOPICS), "output_dir": root / "topics", "method": "pt2", "prefix_length": 7})
    # Exact gates (issue 24): served beside the paper's gates and pt2, each row as `adaprefix predict` answers it.
    train({**common, "task": "conll04", "data_dir": root / "data", "output_dir": root / "ner", "prefix_length": 3,
           "gate_mode": "exact"})
    # Separate gates: the prefix in its own softmax, served in the same batches as the others.
    train({**common, "task": "custom", "train_file": jsonl("s.jsonl", SENTIMENT * 2), "dev_file": jsonl(
        "sd.jsonl", SENTIMENT), "output_dir": root / "separate", "prefix_length": 5, "gate_mode": "separate"})
    return {name: root / name for name in ("sentiment", "topics", "ner", "separate")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_server(app):
    """``app`` on a real uvicorn server on a free localhost port, in a thread; yields (base URL, port)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
