"""MkDocs hooks: the pages that are generated from the code and the benchmark records at build time.

A page asks for generated content with a marker line, ``<!-- generated: NAME -->``, replaced by ``GENERATORS[NAME]()``:

- ``configuration``: AdaptivePrefixConfig's field table (``adaprefix.training.docs.field_table``, the one source of
  the field help that ``adaprefix train --help`` also prints);
- ``train-settings``: every ``adaprefix train --key value`` setting, group by group;
- ``cli``: every command of the typer app, its usage, arguments and options, from the click command typer builds;
- ``headline``: the reproduction's headline block, as ``benchmarks/reproduce/report.py`` writes it into the README;
- ``reading``: ``benchmarks/reproduce/reading.md``, the hand-written reading of the records.

``results/report.md`` is ``benchmarks/reproduce/report.md`` itself (its reading section, shown on the results page,
left out), and the plots it shows are copied from ``benchmarks/reproduce/results`` into the site.
``results/decoders.md`` and ``results/pruning.md`` are the decoder grid's report and the pruning curves (``benchmarks/decoder/results``,
``benchmarks/pruning/results``), each with its plot.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's adaprefix, installed or not
REPRODUCE = ROOT / "benchmarks" / "reproduce"
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)
HEADLINE_START, HEADLINE_END = "<!-- reproduce headline: start -->", "<!-- reproduce headline: end -->"
REPORT_PAGE = "results/report.md"
PLOTS = "results/plots"   # where the reproduction's PNGs go in the site
#: Pages made from other benchmarks' results: (page, the benchmark's markdown, its plot, the plot's place in the site).
DECODER, PRUNING = ROOT / "benchmarks" / "decoder" / "results", ROOT / "benchmarks" / "pruning" / "results"
BENCHMARK_PAGES = (
    ("results/decoders.md", DECODER / "report.md", DECODER / "curves.png", "results/plots/decoder_curves.png"),
    ("results/pruning.md", PRUNING / "curves.md", PRUNING / "curves.png", "results/plots/pruning_curves.png"),
)


def configuration() -> str:
    from adaprefix.config import AdaptivePrefixConfig
    from adaprefix.training.docs import field_table

    return field_table(AdaptivePrefixConfig)


def train_settings() -> str:
    from adaprefix.training.docs import settings_tables

    return settings_tables()


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def cli() -> str:
    """Markdown for every command of ``adaprefix``: help, usage, arguments and options, from the typer app."""
    import click
    import typer.main

    from adaprefix.cli import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name="adaprefix")
    parts = []
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        ctx = click.Context(command, info_name=name, parent=root)
        parts.append(f"## `adaprefix {name}`\n")
        parts.append(_escape(command.help or "").strip() + "\n")
        parts.append(f"```text\nadaprefix {name} {' '.join(command.collect_usage_pieces(ctx))}\n```\n")
        rows = []
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            kind = "argument" if param.param_type_name == "argument" else "option"
            rows.append(f"| `{record[0]}` | {kind} | {_escape(record[1]).replace('|', chr(92) + '|')} |")
        if rows:
            parts.append("| name | kind | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n")
        if name == "train":
            parts.append("Every other setting is given as `--key value` (or in a `--config` YAML file, flat or in "
                         "`custom:` / `adapter:` sections):\n")
            parts.append(train_settings())
    return "\n".join(parts)


def headline() -> str:
    text = (ROOT / "README.md").read_text()
    start, end = text.index(HEADLINE_START), text.index(HEADLINE_END)
    return text[start + len(HEADLINE_START):end].strip() + "\n"


def reading() -> str:
    return (REPRODUCE / "reading.md").read_text()


GENERATORS = {"configuration": configuration, "train-settings": train_settings, "cli": cli, "headline": headline,
              "reading": reading}


def _report_page() -> str:
    """report.md without its reading (on the results page), its plots pointed at their copies in the site."""
    text = (REPRODUCE / "report.md").read_text()
    start = text.index("\n## Reading\n")
    end = text.index("\n## ", start + 1)
    text = (text[:start] + "\n## Reading\n\nThe reading of these tables is on [Headline and reading](index.md).\n"
            + text[end:])
    return text.replace("](results/", "](plots/")


def _benchmark_page(markdown: Path, plot: Path, plot_uri: str) -> str:
    """A benchmark's markdown as a results page, its plot shown at the end (where it has one)."""
    text = markdown.read_text()
    if plot.is_file():
        text += f"\n![{plot.stem}]({Path(plot_uri).relative_to('results').as_posix()})\n"
    return text


def on_files(files, config):
    """Add the full report page, the other benchmarks' pages and every plot to the site."""
    files.append(File.generated(config, REPORT_PAGE, content=_report_page()))
    for png in sorted((REPRODUCE / "results").rglob("*.png")):
        uri = f"{PLOTS}/{png.relative_to(REPRODUCE / 'results').as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    for page, markdown, plot, plot_uri in BENCHMARK_PAGES:
        files.append(File.generated(config, page, content=_benchmark_page(markdown, plot, plot_uri)))
        if plot.is_file():
            files.append(File.generated(config, plot_uri, abs_src_path=str(plot)))
    return files


#: A Sphinx role left in a docstring, as the markdown renderer leaves it: ``:class:`~adaprefix.x.Y` `` becomes
#: ``:class:<code>~adaprefix.x.Y</code>``. Shown as the code name alone (the last part after a ``~``), as Sphinx would.
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def _role(match: re.Match) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def on_page_content(html, page, config, files):
    """Docstrings use Sphinx roles (``:func:`x` ``); show them as code, not as the raw role."""
    return ROLE.sub(_role, html)


def on_page_markdown(markdown, page, config, files):
    """Replace every ``<!-- generated: NAME -->`` line with what its generator renders."""
    def render(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(render, markdown)
