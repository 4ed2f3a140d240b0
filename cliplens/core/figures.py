"""Figures: each explains itself (title, axis labels, units, reference levels, values on marks).

Every figure function takes plain tables/arrays and an output path, draws with matplotlib's
non-interactive Agg backend (``plt`` here) and writes the image atomically
(:func:`save_figure`).  The zero-shot heatmap lives here because every study reads it; each
study's own figures live in ``cliplens/studies/<study>/figures.py``.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, out_path: str | os.PathLike, dpi: int = 150) -> None:
    """Write ``fig`` to ``out_path`` atomically (format from the suffix) and close it."""
    fmt = os.path.splitext(str(out_path))[1].lstrip(".") or "png"
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    plt.close(fig)


def zeroshot_figure(
    table: pd.DataFrame,
    out_path: str | os.PathLike,
    *,
    title: str = "Zero-shot top-1 accuracy",
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> None:
    """Heatmap of top-1 accuracy (%), models (rows) x tasks (columns), values in the cells.

    ``table`` has columns ``model``, ``task``, ``top1`` (fraction) and ``classes``.  Each
    column header names the task, its number of classes and its chance level (100 / classes
    %); a cell at or below chance is printed in italics with a "≤ chance" note.  Row and
    column order follow ``models``/``tasks`` (default: first appearance in the table).
    """
    models = list(models or dict.fromkeys(table["model"]))
    tasks = list(tasks or dict.fromkeys(table["task"]))
    acc = np.full((len(models), len(tasks)), np.nan)
    classes = {}
    for row in table.itertuples(index=False):
        if row.model in models and row.task in tasks:
            acc[models.index(row.model), tasks.index(row.task)] = 100.0 * row.top1
            classes[row.task] = int(row.classes)
    chance = np.array([100.0 / classes[t] if t in classes else np.nan for t in tasks])

    fig, ax = plt.subplots(figsize=(1.6 + 1.35 * len(tasks), 1.2 + 0.55 * len(models)))
    im = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(models)):
        for j in range(len(tasks)):
            v = acc[i, j]
            if np.isnan(v):
                ax.text(j, i, "n/a", ha="center", va="center", color="grey", fontsize=9)
                continue
            below = v <= chance[j]
            ax.text(j, i, f"{v:.1f}" + ("\n≤ chance" if below else ""), ha="center",
                    va="center", fontsize=9 if not below else 8,
                    style="italic" if below else "normal",
                    color="black" if v > 60 else "white")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(
        [f"{t}\n{classes.get(t, '?')} classes\nchance {c:.1f}%" for t, c in zip(tasks, chance)],
        fontsize=8,
    )
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models, fontsize=8)
    ax.set_xlabel("task (classes, chance level); italic cells: at or below chance")
    ax.set_ylabel("model")
    n = table["n"].iloc[0] if "n" in table and len(table) and table["n"].nunique() == 1 else None
    ax.set_title(title + (f" (n = {n} images per task)" if n is not None else ""))
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("top-1 accuracy (%)")
    save_figure(fig, out_path)
