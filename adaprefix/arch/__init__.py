"""Architecture facts: where the layers and their attention live, in one table (see table.py)."""

from .table import ARCHITECTURES, ArchSpec, UnsupportedModelError, BackboneShape, resolve_arch

__all__ = ["ARCHITECTURES", "ArchSpec", "BackboneShape", "UnsupportedModelError", "resolve_arch"]
