"""Architecture facts: where the layers and their attention live, in one table (see table.py)."""

from .table import (ARCHITECTURES, HIDDEN_DROPOUT_NAMES, ArchSpec, BackboneShape, UnsupportedModelError,
                    hidden_dropout_name, resolve_arch)

__all__ = ["ARCHITECTURES", "HIDDEN_DROPOUT_NAMES", "ArchSpec", "BackboneShape", "UnsupportedModelError",
           "hidden_dropout_name", "resolve_arch"]
