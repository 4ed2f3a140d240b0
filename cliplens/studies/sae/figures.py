"""Study 002's figures (each draws a table written beside it)."""

from __future__ import annotations

import pandas as pd

from ...core.figures import plt, save_figure


def plot_metrics(table: pd.DataFrame, out_path) -> None:
    """Left: L0 (active latents per sample) against explained variance R²; right: against
    CLIP+SAE zero-shot accuracy, CLIP's own accuracy as a cross at the same L0.  One marker per
    SAE (colour) and task (shape)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    markers = dict(zip(sorted(table["task"].unique()), "osD^v<>ph*"))
    colours = dict(zip(table["sae"].unique(), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for _, r in table.iterrows():
        c, m = colours[r["sae"]], markers[r["task"]]
        left.scatter(r["l0"], r["r2"], color=c, marker=m)
        right.scatter(r["l0"], 100 * r["accuracy_sae"], color=c, marker=m)
        right.scatter(r["l0"], 100 * r["accuracy_clip"], color=c, marker="x", alpha=0.5)
    for name, c in colours.items():
        left.scatter([], [], color=c, label=name)
    for task, m in markers.items():
        left.scatter([], [], color="grey", marker=m, label=task)
    right.scatter([], [], color="grey", marker="x", label="CLIP alone")
    left.set_xlabel("L0 (active latents per sample)")
    left.set_ylabel("explained variance R²")
    right.set_xlabel("L0 (active latents per sample)")
    right.set_ylabel("CLIP+SAE zero-shot accuracy (%)")
    left.legend(fontsize=6, loc="lower right")
    right.legend(fontsize=6, loc="lower right")
    model = table["model"].iloc[0] if len(table) else ""
    fig.suptitle(f"{model}: sparse autoencoders, sparsity against fidelity", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path)


def _panels(n: int, height: float):
    """A figure of ``n`` panels, four per row, every axis off until drawn on."""
    import math

    n = max(1, n)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, height * rows + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def plot_collages(images, titles, out_path, title: str) -> None:
    """One 3 x 3 collage per feature (``images``: feature -> uint8 picture), four per row."""
    fig, axes = _panels(len(images), 2.6)
    for ax, (j, im) in zip(axes.ravel(), images.items()):
        ax.imshow(im)
        ax.set_title(titles[j], fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_histograms(counts, edges, titles, features, out_path, title: str) -> None:
    """Each feature's histogram of non-zero activations (counts [n, bins] on ``edges``)."""
    fig, axes = _panels(len(features), 1.8)
    for ax, j, c in zip(axes.ravel(), features, counts):
        ax.axis("on")
        ax.stairs(c, edges, fill=True)
        ax.set_title(titles[j].split("\n")[0], fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path)
