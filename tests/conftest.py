"""Shared set-up of the core tests.

tests/ is a package (so that tests/test_config.py, for adaprefix/config.py, and tests/training/test_config.py, for
adaprefix/training/config.py, can both exist); pytest then puts the repository root on the import path instead of
tests/, so tests/ is added here for the helpers the test modules import by name (``from tiny_models import ...``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
