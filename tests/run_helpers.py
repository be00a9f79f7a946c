"""Data and settings shared by the end-to-end training and CLI tests."""

SENTIMENT = [("a wonderful, moving film", "pos"), ("dull and far too long", "neg"), ("I loved every minute", "pos"),
             ("a tedious mess", "neg"), ("brilliant acting throughout", "pos"), ("boring plot, weak jokes", "neg"),
             ("an absolute delight", "pos"), ("I want my money back", "neg")]


def tiny_settings(backbone, files, out, **extra):
    """CLI settings of a short custom-data run on the tiny backbone."""
    settings = {"task": "custom", "model": backbone, "output_dir": str(out), "epochs": 3, "batch_size": 4,
                "prefix_length": 4, "max_length": 32, "logging_steps": 1, **files, **extra}
    return settings
