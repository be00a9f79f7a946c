"""Settings shared by the end-to-end training tests."""


def tiny_settings(backbone, files, out, **extra):
    """CLI settings of a short custom-data run on the tiny backbone."""
    settings = {"task": "custom", "model": backbone, "output_dir": str(out), "epochs": 3, "batch_size": 4,
                "prefix_length": 4, "max_length": 32, "logging_steps": 1, **files, **extra}
    return settings
