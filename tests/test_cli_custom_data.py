"""`adaprefix train --task custom` end to end on the files that failed in issue 12: a biomedical-style tagging
corpus in .tsv, and a GLUE-style paraphrase TSV with quote characters and a byte-order mark."""

import json

import yaml
from typer.testing import CliRunner

from adaprefix.cli import app
from run_helpers import tiny_settings

runner = CliRunner()

TAGGED = [("IL-2", "B-protein"), ("gene", "I-protein"), ("expression", "O"), ("requires", "O"),
          ("NF-kappa", "B-protein"), ("B", "I-protein"), ("in", "O"), ("T", "B-cell_type"), ("cells", "I-cell_type")]


def _tagging_tsv(path, sentences):
    blocks = ["".join(f"{token}\t{tag}\n" for token, tag in TAGGED[i:] + TAGGED[:i]) for i in range(sentences)]
    path.write_text("-DOCSTART-\tO\n\n" + "\n".join(blocks))
    return str(path)


def _args(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def test_tagging_data_in_tsv_trains_as_ner(tiny_backbone, tmp_path):
    files = {"train_file": _tagging_tsv(tmp_path / "train.tsv", 8), "dev_file": _tagging_tsv(tmp_path / "devel.tsv", 3)}
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *_args(tiny_settings(tiny_backbone, files, run, epochs=1))])
    assert result.exit_code == 0, result.output
    assert "custom apt: best dev f1" in result.stdout
    final = json.loads((run / "final_metrics.json").read_text())
    assert (final["main_metric"], final["lr_schedule"], final["best_epoch"]) == ("f1", "exponential", 1)
    assert (final["train_examples"], final["train_examples_full"], final["data_seed"]) == (8, 8, 42)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["custom"]["format"], saved["data_seed"], saved["seed"]) == ("conll", 42, 42)
    assert json.loads((run / "labels.json").read_text()) == ["O", "B-cell_type", "B-protein", "I-cell_type",
                                                              "I-protein"]
    predicted = runner.invoke(app, ["predict", str(run), "IL-2 gene expression"])
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.stdout.strip().splitlines()[-1])["tags"]) == 3


def test_glue_style_tsv_with_quotes_and_bom_trains_on_a_seeded_subset(tiny_backbone, tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = [f'{label}\t{i}\t{i + 100}\t" We are declaring war {i} .\t" We have declared war , " Rosa said {i} .\n'
            for i, label in enumerate([0] * 6 + [1] * 6)]  # sorted by label, as such files often are
    train = tmp_path / "msr_paraphrase_train.tsv"
    train.write_text(header + "".join(rows))
    dev = tmp_path / "msr_paraphrase_dev.tsv"
    dev.write_text(header + "".join(rows[::3]))
    files = {"train_file": str(train), "dev_file": str(dev), "label_column": "Quality",
             "text_column": "#1 String", "text_pair_column": "#2 String"}
    run = tmp_path / "run"
    settings = tiny_settings(tiny_backbone, files, run, epochs=1, max_train_samples=6, data_seed=5)
    result = runner.invoke(app, ["train", *_args(settings)])
    assert result.exit_code == 0, result.output
    assert "note: training on 6 of 12 train examples, drawn with data_seed 5" in result.stdout
    final = json.loads((run / "final_metrics.json").read_text())
    assert (final["train_examples"], final["train_examples_full"], final["data_seed"]) == (6, 12, 5)
    assert final["main_metric"] == "accuracy" and final["lr_schedule"] == "linear"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["custom"]["format"], saved["custom"]["tsv_quoting"], saved["data_seed"],
            saved["max_train_samples"]) == ("tsv", "auto", 5, 6)

    train.unlink()  # the run recorded its format: predicting needs no train file to sniff
    predicted = runner.invoke(app, ["predict", str(run), '" A quoted sentence .', "Another one ."])
    assert predicted.exit_code == 0, predicted.output
    line = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert line["text"] == '" A quoted sentence .' and line["label"] in ("0", "1")


def test_an_ambiguous_file_is_refused_naming_the_format_flag(tiny_backbone, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("IL-2\tB-protein\ngene\tO\n")
    result = runner.invoke(app, ["train", *_args(tiny_settings(tiny_backbone, {"train_file": str(train),
                                                                              "dev_file": str(train)},
                                                              tmp_path / "run"))])
    assert result.exit_code == 2
    assert f"{train}:1: cannot tell whether this is tagging or classification data" in result.output
    assert "--format conll (tagging) or --format tsv (classification)" in result.output
