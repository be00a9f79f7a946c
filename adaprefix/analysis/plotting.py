"""matplotlib, imported only when a plot is drawn: it is an extra (``pip install "adaprefix[plot]"``)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or an ImportError naming the extra to install."""
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ImportError('Plots need matplotlib: pip install "adaprefix[plot]"') from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
