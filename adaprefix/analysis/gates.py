"""What the gates learned: per-layer lambda, token-gate statistics over a split, and a layer x token heat map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import AdaprefixError
from ..files import atomic_write_json
from ..introspect import collect_token_gates, effective_gates, layer_gates
from .plotting import pyplot


class NoGatesError(AdaprefixError, ValueError):
    """The run's method has no gates to report (full fine-tuning, or P-tuning v2)."""


def plot_gate_heatmap(gate: torch.Tensor, title: str, path: Path) -> None:
    """Heat map of an (N layers, l pseudo tokens) gate matrix, layer 1 at the bottom as in the paper's figure."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * gate.shape[1] + 2), max(3.0, 0.4 * gate.shape[0] + 1.5)))
    image = ax.imshow(gate.numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xlabel("pseudo token")
    ax.set_ylabel("layer")
    ax.set_yticks(range(gate.shape[0]), [str(i + 1) for i in range(gate.shape[0])])
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="lambda x alpha")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gate_report(run_dir: str | Path, split: str = "dev", output: str | Path | None = None,
                max_examples: int = 512) -> dict[str, Any]:
    """Gate statistics of a run's best adapter over ``split``; writes ``gates.json`` and a PNG heat map.

    ``examples`` counts the sequences the backbone saw: on a multiple-choice task (COPA) each example's choices."""
    from ..training import load_run
    from ..training.recipe import resolve_max_length

    loaded = load_run(run_dir)
    model, task = loaded.model, loaded.task
    if loaded.config.method in ("ft", "head", "pt2"):
        raise NoGatesError(f"run {run_dir} uses method {loaded.config.method!r}, which has no gates")
    token = None
    if model.adaprefix.token_gate is not None:
        examples = task.load(split, loaded.config.data_dir)[:max_examples]
        max_length = resolve_max_length(loaded.config, task, loaded.tokenizer)
        rows = list(task.encode(examples, loaded.tokenizer, max_length).dataset)
        collate = task.collator(loaded.tokenizer)
        batches = [{k: v for k, v in collate(rows[i:i + 32]).items() if k != "labels"}
                   for i in range(0, len(rows), 32)]
        # (examples, N, l); a multiple-choice model takes (B, choices, T) and runs its backbone on B * choices rows,
        # so there each (example, choice) pair is a row of its own
        token = collect_token_gates(model, batches)
    gate = effective_gates(model, token)
    lam = layer_gates(model)
    layers = []
    for i in range(gate.shape[0]):
        alpha = token[:, i] if token is not None else None
        layers.append({
            "layer": i + 1,
            "lambda": None if lam is None else float(lam[i]),
            "alpha_mean": None if alpha is None else float(alpha.mean()),
            "alpha_min": None if alpha is None else float(alpha.min()),
            "alpha_max": None if alpha is None else float(alpha.max()),
            "alpha_example_std": None if alpha is None else float(alpha.std(dim=0).mean()),
            "gate": float(gate[i].mean()),
        })
    png = Path(output) if output else Path(run_dir) / "gates.png"
    plot_gate_heatmap(gate, f"{task.name} {loaded.config.method}: learned gates ({split})", png)
    report = {"png": str(png), "split": split, "examples": 0 if token is None else int(token.shape[0]),
              "layers": layers, "effective_gate": gate.tolist()}
    atomic_write_json(Path(run_dir) / "gates.json", report)
    return report
