"""Draws docs/img/apt-layer.svg, the Concepts page's figure: one layer's attention with its gated prefix.

Run from the repository root: ``python docs/figures/apt_layer.py`` (matplotlib, the ``plot`` extra). The SVG keeps its
text as paths, so it looks the same without any font installed, and carries no date, so a rerun gives the same file.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "apt-layer.svg"

FROZEN = "#e8eaf0"     # the backbone's own parts: frozen
TRAINED = "#ffe0b2"    # what APT trains: prefix and gates
GATED = "#c8e6c9"      # the gated prefix, as the attention sees it
EDGE = "#37474f"


def box(ax, x, y, w, h, text, color, size=10.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec=EDGE, lw=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, color="#111111")


def arrow(ax, start, end, text=None, offset=(0.08, 0.0)):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=13, lw=1.2, color=EDGE,
                                 shrinkA=2, shrinkB=2))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, fontsize=9,
                color="#333333", ha="left", va="center")


def draw() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(9.6, 5.6))
    ax.set_xlim(0, 12.6)
    ax.set_ylim(0, 7)
    ax.axis("off")

    # The input of layer i and the host's projections.
    box(ax, 0.3, 0.3, 3.0, 0.8, r"$h_{i-1}$  (B, T, d)", FROZEN)
    box(ax, 0.3, 2.0, 3.0, 0.8, r"$Q, K, V = h_{i-1} W_{q,k,v}$", FROZEN, 10)
    arrow(ax, (1.8, 1.1), (1.8, 2.0))

    # The token gate reads h_{i-1}; the layer gate is a scalar.
    box(ax, 4.0, 0.3, 3.7, 0.8, r"pool: masked mean (encoders)" "\n" r"or each query's own state (decoders)", FROZEN, 8)
    arrow(ax, (3.3, 0.7), (4.0, 0.7))
    box(ax, 4.0, 2.0, 3.7, 0.8, r"token gate $\alpha_i = \sigma(\mathrm{pool}(h_{i-1})\,W_i + b_i)$", TRAINED, 8.3)
    arrow(ax, (5.85, 1.1), (5.85, 2.0))
    box(ax, 8.3, 2.0, 3.4, 0.8, r"layer gate $\lambda_i$ (one scalar)", TRAINED, 9.5)

    # The prefix and its gating.
    box(ax, 8.3, 0.3, 3.4, 0.8, r"prefix $P_k, P_v$  (l pseudo tokens)", TRAINED, 9)
    box(ax, 5.2, 3.6, 5.2, 0.9, r"gated prefix $\lambda_i\,\alpha_{ij}\,[P_k; P_v]_j$  for $j = 1..l$", GATED, 10.5)
    arrow(ax, (5.85, 2.8), (6.6, 3.6), r"$\alpha_i$", offset=(-0.45, 0.0))
    arrow(ax, (10.0, 2.8), (9.4, 3.6), r"$\lambda_i$", offset=(0.15, 0.0))
    ax.plot([11.7, 12.2, 12.2], [0.7, 0.7, 4.05], color=EDGE, lw=1.2)   # around the layer gate, into the gated prefix
    ax.add_patch(FancyArrowPatch((12.2, 4.05), (10.4, 4.05), arrowstyle="-|>", mutation_scale=13, lw=1.2, color=EDGE,
                                 shrinkA=0, shrinkB=2))
    ax.text(11.0, 4.25, r"$P_k, P_v$", fontsize=9, color="#333333")

    # The host's attention over the prefix and the real keys.
    box(ax, 0.3, 5.2, 10.1, 0.9, r"attention:  softmax$\left(Q\,[\lambda\alpha P_k;\ K]^\top / \sqrt{d_h}\right)"
        r"\,[\lambda\alpha P_v;\ V]$" "\n" "the host's own eager or sdpa kernel, mask widened by l visible columns",
        FROZEN, 10)
    arrow(ax, (1.8, 2.8), (1.8, 5.2), r"$Q, K, V$", offset=(0.1, 0.3))
    arrow(ax, (7.8, 4.5), (7.8, 5.2), "prepended to K, V", offset=(0.1, 0.0))
    box(ax, 10.7, 5.2, 1.0, 0.9, r"$h_i$", FROZEN)
    arrow(ax, (10.4, 5.65), (10.7, 5.65))

    ax.text(0.3, 6.65, "One layer i with APT.  Orange: trained.  Grey: the frozen backbone.  "
            "pt2 (P-tuning v2) is the same without the two gates.", fontsize=9.5, color="#333333")
    return fig


def main() -> None:
    matplotlib.rcParams["svg.hashsalt"] = "adaprefix"   # stable element ids
    fig = draw()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, format="svg", bbox_inches="tight", metadata={"Date": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
