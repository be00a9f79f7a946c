"""adaprefix: Adaptive Prefix Tuning (APT) and P-tuning v2 for Hugging Face Transformers models."""

from .adapter import AdapterStateError, adapter_runtime, is_attached
from .arch import UnsupportedModelError
from .config import AdaptivePrefixConfig, ConfigError
from .errors import AdaprefixError
from .inject import attach, detach, load_adapter
from .multi import AdapterRoutingError, adapter_width, list_adapters
from .introspect import collect_token_gates, effective_gates, last_token_gates, layer_gates
from .peft_format import PeftConversionWarning, export_peft
from .persistence import AdapterLoadError, BaseModelMismatchWarning, read_adapter_config, save_adapter
from .pruning import PruneResult, PruningWarning, prune_adapter
from .text_init import init_prefix_from_text

__version__ = "0.1.0"

__all__ = [
    "AdaprefixError",
    "AdaptivePrefixConfig",
    "AdapterLoadError",
    "AdapterRoutingError",
    "AdapterStateError",
    "BaseModelMismatchWarning",
    "PeftConversionWarning",
    "ConfigError",
    "PruneResult",
    "PruningWarning",
    "UnsupportedModelError",
    "adapter_runtime",
    "adapter_width",
    "attach",
    "collect_token_gates",
    "detach",
    "effective_gates",
    "export_peft",
    "init_prefix_from_text",
    "is_attached",
    "last_token_gates",
    "layer_gates",
    "list_adapters",
    "load_adapter",
    "prune_adapter",
    "read_adapter_config",
    "save_adapter",
]
