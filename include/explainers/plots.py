"""PNG plots of explanations (matplotlib, Agg canvas, no global pyplot state).

The object-oriented ``Figure`` + ``FigureCanvasAgg`` API is used instead of ``pyplot`` so that
plotting never touches a GUI backend and stays safe inside worker processes and threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def saliency_png(
    path: Path,
    image: np.ndarray,
    grid: np.ndarray,
    title: str,
    tabular_names: Sequence[str] = (),
    tabular_values: Sequence[float] = (),
) -> None:
    """The digit beside a diverging heat map of its pixel attributions (+ tabular bars).

    The colour scale is symmetric around 0 (red raises the explained output, blue lowers it)
    so that the colour of a pixel means the same in every saliency map of a run.
    """
    panels = 3 if len(tabular_names) else 2
    figure = _figure(3.6 * panels, 3.6)
    axes = figure.subplots(1, panels, gridspec_kw={"width_ratios": [1.0, 1.15, 1.0][:panels]})
    axes[0].imshow(image, cmap="gray_r", interpolation="nearest")
    axes[0].set_title("input")
    limit = float(np.max(np.abs(grid))) or 1.0
    heat = axes[1].imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    axes[1].set_title("pixel attribution")
    figure.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes[:2]:
        ax.set_xticks(range(image.shape[1]))
        ax.set_yticks(range(image.shape[0]))
        ax.tick_params(labelsize=6)
    if panels == 3:
        values = np.asarray(tabular_values, dtype=float)
        colours = ["#c0392b" if v > 0 else "#2e86c1" for v in values]
        positions = np.arange(len(values))
        axes[2].barh(positions, values, color=colours)
        axes[2].set_yticks(positions, labels=list(tabular_names), fontsize=7)
        axes[2].axvline(0.0, color="black", linewidth=0.6)
        axes[2].invert_yaxis()
        axes[2].set_title("tabular attribution")
        axes[2].tick_params(axis="x", labelsize=7)
    figure.suptitle(title, fontsize=9)
    # Fixed margins: tight_layout would cost more than drawing the figure itself.
    figure.subplots_adjust(left=0.05, right=0.97, bottom=0.1, top=0.82, wspace=0.75 if panels == 3 else 0.3)
    figure.savefig(path, format="png")


def global_importance_png(
    path: Path, names: Sequence[str], values: Sequence[float], title: str, top: int = 25
) -> None:
    """Horizontal bars of mean |attribution| per feature/player, largest first (top ``top``)."""
    values_arr = np.asarray(values, dtype=float)
    order = np.argsort(-values_arr, kind="stable")[:top]
    shown = len(order)
    figure = _figure(7.0, max(2.5, 0.28 * shown + 1.2))
    ax = figure.subplots(1, 1)
    positions = np.arange(shown)
    ax.barh(positions, values_arr[order], color="#34495e")
    ax.set_yticks(positions, labels=[names[i] for i in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean |attribution|")
    suffix = f" (top {shown} of {len(values_arr)})" if shown < len(values_arr) else ""
    ax.set_title(title + suffix, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png")
