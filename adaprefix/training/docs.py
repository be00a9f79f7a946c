"""The settings as people read them, rendered from the dataclasses' field help: the CLI's help and the documentation
site's configuration and command-line tables (docs/hooks.py fills them in at build time).
``python -m adaprefix.training.docs`` prints the configuration table."""

from __future__ import annotations

import dataclasses
from dataclasses import fields

from ..config import AdaptivePrefixConfig
from .config import TrainConfig, run_fields, section_fields

#: The heading of each group of settings in the CLI's help.
GROUPS = {"run": "Run settings", "custom": "Bring-your-own data (--task custom)",
          "adapter": "Adapter (AdaptivePrefixConfig; not for --method ft)"}


def _default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def setting_help(name: str) -> str:
    """A run setting's help with its default (where not None, which the help explains), for a typed CLI option."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    default = _default(f)
    return _help(f) + (f" Default: {default}." if default is not None else "")


def settings_epilog() -> str:
    """Every ``--key value`` setting, group by group, with its default and help (the `train` command's epilog)."""
    lines = ["Settings (--key value; also in a --config YAML file, flat or in custom: / adapter: sections):\n\n"]
    for group, group_fields in (("run", run_fields()), ("custom", section_fields("custom")),
                                ("adapter", section_fields("adapter"))):
        lines.append(f"{GROUPS[group]}:\n\n")
        for f in group_fields:
            lines.append(f"--{f.name.replace('_', '-')} (default {_default(f)!r}): {_help(f)}\n\n")
    return "".join(lines)


def settings_tables() -> str:
    """Every ``--key value`` setting of ``adaprefix train`` as markdown: one table per group, with default and help."""
    parts = []
    for group, group_fields in (("run", run_fields()), ("custom", section_fields("custom")),
                                ("adapter", section_fields("adapter"))):
        rows = [f"**{GROUPS[group]}**", "", "| setting | default | meaning |", "|---|---|---|"]
        rows += [f"| `--{f.name.replace('_', '-')}` | `{_default(f)!r}` | {_escape_cell(_help(f))} |"
                 for f in group_fields]
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _escape_cell(text: str) -> str:
    """Help text as one markdown table cell: a ``|`` would end the cell, a ``<name>`` would be read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def field_table(cls: type) -> str:
    """A markdown table of a config dataclass: field, default and meaning (its help), one row per field."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | `{_default(f)!r}` | {_escape_cell(_help(f))} |" for f in fields(cls)]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(field_table(AdaptivePrefixConfig), end="")
