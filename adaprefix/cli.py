"""`adaprefix` command line: a thin typer layer over TrainConfig and the training/run functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adaptive Prefix Tuning (APT) and P-tuning v2 for Hugging Face Transformers.")
console = Console(stderr=True)
out = Console()


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .arch import UnsupportedModelError
    from .config import ConfigError
    from .persistence import AdapterLoadError
    from .tasks import DataError, UnknownTaskError
    from .training.callbacks import NonFiniteLossError
    from .training.config import TrainConfigError
    from .training.recipe import RunExistsError
    from .training.runs import RunNotFoundError

    return (DataError, UnknownTaskError, TrainConfigError, ConfigError, RunExistsError, NonFiniteLossError,
            AdapterLoadError, UnsupportedModelError, RunNotFoundError)


def _fail(err: BaseException) -> None:
    console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _parse_overrides(args: list[str]) -> dict[str, str]:
    """`--key value` and `--key=value` pairs; a flag with no value means true."""
    overrides, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise typer.BadParameter(f"unexpected argument {arg!r}; settings are given as --key value")
        key, equals, value = arg[2:].partition("=")
        if not equals:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        overrides[key] = value
        i += 1
    return overrides


def _settings_help() -> str:
    """Every `--key value` setting with its help text, derived from the config dataclasses."""
    from dataclasses import fields

    from .config import AdaptivePrefixConfig
    from .training.config import TrainConfig

    lines = ["Settings (--key value; also in a --config YAML file):\n\n"]
    for cls in (TrainConfig, AdaptivePrefixConfig):
        for f in fields(cls):
            if f.name == "adapter" or (cls is AdaptivePrefixConfig and f.name == "method"):
                continue
            lines.append(f"--{f.name.replace('_', '-')} (default {f.default!r}): {f.metadata.get('help', '')}\n\n")
    return "".join(lines)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog=_settings_help())
def train(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, help="Task (see `adaprefix tasks`); default cb."),
    method: Optional[str] = typer.Option(None, help="ft, apt, pt2, token-gate or layer-gate; default apt."),
    model: Optional[str] = typer.Option(None, help="Backbone: 'minilm' (packaged default), a path or hub name."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of settings (see configs/)."),
    data_dir: Optional[str] = typer.Option(None, help="Task data folder (default $ADAPREFIX_DATA_DIR or "
                                                      "../shared/data)."),
    output_dir: Optional[str] = typer.Option(None, help="Run folder (default runs/<task>-<method>-s<seed>)."),
    overwrite: bool = typer.Option(False, help="Replace a run already in the output folder."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last complete checkpoint."),
):
    """Train a method on a task. Any other setting as `--key value` (e.g. --epochs 5 --prefix-length 8).

    With no arguments: the main job, APT on CB with the packaged MiniLM (a few minutes on 2 CPU cores).
    """
    from .training import load_train_config, train as run_training

    given = {k: v for k, v in dict(task=task, method=method, model=model, data_dir=data_dir,
                                   output_dir=output_dir).items() if v is not None}
    try:
        overrides = {**given, **_parse_overrides(list(ctx.args))}
        cfg = load_train_config(config, overrides)
        console.print(f"[bold]adaprefix train[/]: {cfg.method} on {cfg.task} with {cfg.model} -> {cfg.run_dir()}")
        result = run_training(cfg, overwrite=overwrite, resume=resume)
    except _expected_errors() as err:
        _fail(err)
    out.print(result.summary(), highlight=False, soft_wrap=True)


@app.command("eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `adaprefix train`."),
    split: str = typer.Option("dev", help="dev (alias val) or test."),
    data_dir: Optional[str] = typer.Option(None, help="Override the run's data folder."),
):
    """Evaluate a run's best model on a split and print the metrics."""
    from .tasks import canonical_split
    from .training import evaluate_run

    try:
        metrics = evaluate_run(run_dir, canonical_split(split), data_dir)
    except _expected_errors() + (ValueError,) as err:
        _fail(err)
    table = Table("metric", "value", title=f"{run_dir} ({split})")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `adaprefix train`."),
    text: Optional[str] = typer.Argument(None, help="Input text (NER: whitespace-separated words)."),
    text_pair: Optional[str] = typer.Argument(None, help="Second text, for pair tasks."),
    file: Optional[Path] = typer.Option(None, help="Inputs: jsonl in the task's own format, or a text file with "
                                                   "one input per line (a tab separates text and pair)."),
    output: Optional[Path] = typer.Option(None, help="Write JSON lines here instead of standard output."),
):
    """Predict labels (or NER tags) for new inputs with a run's best model."""
    from .training import load_run
    from .training.runs import predict as run_predict

    try:
        loaded = load_run(run_dir)
        inputs = _read_inputs(loaded, text, text_pair, file)
        results = run_predict(loaded, inputs)
    except _expected_errors() + (ValueError,) as err:
        _fail(err)
    lines = [json.dumps({**_shown(inp), **res}) for inp, res in zip(inputs, results)]
    if output:
        output.write_text("\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} predictions to {output}")
    else:
        out.print("\n".join(lines), highlight=False, soft_wrap=True)


def _shown(example: dict) -> dict:
    return {k: v for k, v in example.items() if k not in ("label", "source", "tags", "tag_ids") and v is not None}


def _text_fields(task) -> tuple[str, ...]:
    if task.kind == "token-classification":
        return ("tokens",)
    if hasattr(task, "text_fields"):
        return tuple(task.text_fields)
    return ("text", "text_pair") if task.text_pair_column else ("text",)  # custom classification


def _jsonl_inputs(task, file: Path) -> list[dict]:
    """Records of a jsonl file in the task's own format, checked for the fields the task reads."""
    if hasattr(task, "load_file"):
        return task.load_file(file)
    if task.kind == "token-classification":
        columns = {"tokens": "tokens"}
    else:
        columns = {"text": task.text_column}
        if task.text_pair_column:
            columns["text_pair"] = task.text_pair_column
    from .tasks.readers import numbered_lines, read_text

    examples = []
    for number, line in numbered_lines(read_text(file)):  # a byte-order mark and CRLF line ends are fine
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}:{number}: not valid JSON ({err})") from None
        missing = [c for c in columns.values() if c not in record]
        if missing:
            raise ValueError(f"{file}:{number}: missing field(s) {', '.join(missing)}; present: {', '.join(record)}")
        examples.append({key: record[column] for key, column in columns.items()})
    return examples


def _read_inputs(loaded, text, text_pair, file) -> list[dict]:
    from .tasks.readers import numbered_lines, read_text

    task = loaded.task
    fields = _text_fields(task)
    if file is not None:
        if not file.is_file():
            raise ValueError(f"{file}: input file not found")
        if file.suffix == ".jsonl":
            return _jsonl_inputs(task, file)
        rows = [line.split("\t") for _, line in numbered_lines(read_text(file)) if line.strip()]
    elif text is not None:
        rows = [[text] + ([text_pair] if text_pair is not None else [])]
    else:
        raise ValueError("give an input text (and pair), or --file")
    if task.kind == "token-classification":
        return [{"tokens": row[0].split()} for row in rows]
    if task.kind == "multiple-choice" or len(fields) > 2:
        raise ValueError(f"task {task.name!r} takes fields {', '.join(fields)}: pass --file with jsonl records in "
                         "its official format")
    examples = []
    for number, row in enumerate(rows, 1):
        if len(row) > len(fields):
            raise ValueError(f"input {number}: {len(row)} texts, but task {task.name!r} takes {len(fields)} "
                             f"({', '.join(fields)})")
        if len(row) < len(fields):
            raise ValueError(f"input {number}: task {task.name!r} takes a pair ({', '.join(fields)}); give both")
        examples.append(dict(zip(fields, row)))
    return examples


@app.command()
def tasks(data_dir: Optional[str] = typer.Option(None, help="Task data folder to look in.")):
    """List the tasks, where their data is looked for, and whether it was found."""
    from .tasks import describe_tasks

    table = Table("task", "kind", "labels", "train", "dev", "test")
    table.add_column("looked in", overflow="fold")
    mark = {True: "[green]found[/]", False: "[red]missing[/]"}
    for info in describe_tasks(data_dir):
        table.add_row(info.name, info.kind, str(info.num_labels or "?"), mark[info.splits["train"]],
                      mark[info.splits["dev"]], mark[info.splits["test"]], str(info.where))
    out.print(table)


@app.command()
def gates(
    run_dir: Path = typer.Argument(..., help="A run folder of an apt/token-gate/layer-gate run."),
    split: str = typer.Option("dev", help="Split whose examples feed the token gates."),
    output: Optional[Path] = typer.Option(None, help="PNG heat map path (default <run>/gates.png)."),
):
    """Show what the gates learned: a layer x pseudo-token heat map and per-layer statistics."""
    from .analysis.gates import gate_report
    from .tasks import canonical_split

    try:
        report = gate_report(run_dir, canonical_split(split), output)
    except _expected_errors() + (ValueError,) as err:
        _fail(err)
    table = Table("layer", "lambda", "mean alpha", "min alpha", "max alpha", "mean gate", title=str(report["png"]))
    for row in report["layers"]:
        table.add_row(*[str(row["layer"])] + [("-" if row[k] is None else f"{row[k]:.3f}")
                                              for k in ("lambda", "alpha_mean", "alpha_min", "alpha_max", "gate")])
    out.print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
