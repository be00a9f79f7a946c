"""Data and settings shared by the end-to-end training and CLI tests."""

import json

SENTIMENT = [("a wonderful, moving film", "pos"), ("dull and far too long", "neg"), ("I loved every minute", "pos"),
             ("a tedious mess", "neg"), ("brilliant acting throughout", "pos"), ("boring plot, weak jokes", "neg"),
             ("an absolute delight", "pos"), ("I want my money back", "neg")]


# CoNLL04 in its official column format, three short documents.
CONLL04 = ("#doc 1\n0\tJohn\tB-Peop\t['N']\t[0]\n1\tSmith\tI-Peop\t['Live_In']\t[3]\n2\tlives\tO\t['N']\t[2]\n"
           "3\tin\tO\t['N']\t[3]\n4\tBoston\tB-Loc\t['N']\t[4]\n"
           "#doc 2\n0\tIBM\tB-Org\t['N']\t[0]\n1\thired\tO\t['N']\t[1]\n2\tMary\tB-Peop\t['N']\t[2]\n"
           "#doc 3\n0\tParis\tB-Loc\t['N']\t[0]\n1\tis\tO\t['N']\t[1]\n2\tbig\tO\t['N']\t[2]\n")


def tiny_settings(backbone, files, out, **extra):
    """CLI settings of a short custom-data run on the tiny backbone."""
    settings = {"task": "custom", "model": backbone, "output_dir": str(out), "epochs": 3, "batch_size": 4,
                "prefix_length": 4, "max_length": 32, "logging_steps": 1, **files, **extra}
    return settings


def epoch_records(run, *, timed=False):
    """A run's metrics.jsonl records; without their wall times unless ``timed`` (two runs never take the same)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return records if timed else [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in records]
