"""Study 001's figures: ablation curves, the head-factor check, spatial maps, nearest neighbours
and spurious-head removal.  Each takes the data its job also writes as a table or arrays."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ...core.figures import plt, save_figure


def plot_ablation(table: pd.DataFrame, out_path, title: str) -> None:
    """One panel per task: accuracy against the number of layers ablated, one line per kind."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    labels = {"attention": "attention heads", "mlp": "MLPs", "cls_to_cls": "CLS→CLS attention only"}
    for ax, task in zip(axes[0], tasks):
        t = table[table["task"] == task]
        for kind, g in t.groupby("ablated", sort=False):
            ax.plot(g["layers_ablated"], 100 * g["accuracy"], marker="o", label=labels.get(kind, kind))
        ax.axhline(100 * t["chance"].iloc[0], color="grey", ls=":", label="chance")
        ax.set_title(task)
        ax.set_xlabel("first l layers mean-ablated")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("zero-shot accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_factors(table: pd.DataFrame, factors: Sequence[str], out_path, title: str) -> None:
    S = table[[f"r2_{f}" for f in factors]].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 + 1.0 * len(factors), 0.9 + 0.42 * len(table)))
    im = ax.imshow(S, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(table.itertuples(index=False)):
        for c, f in enumerate(factors):
            ax.text(c, r, f"{S[r, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if S[r, c] < 0.6 else "black")
        ax.add_patch(plt.Rectangle((factors.index(row.probe_factor) - 0.5, r - 0.5), 1, 1,
                                   fill=False, ec="red", lw=2))
        if row.textspan_factor in factors:
            ax.plot(factors.index(row.textspan_factor) + 0.3, r - 0.25, "o", color="orange",
                    ms=6, mec="black")
    ax.set_xticks(range(len(factors)))
    ax.set_xticklabels(factors)
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels([f"L{r.layer}.H{r.head}" for r in table.itertuples(index=False)], fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05).set_label("variance share (R²)")
    ax.set_title(title, fontsize=8)
    save_figure(fig, out_path)


def plot_spatial_maps(show: Mapping, heads: Mapping[str, list], out_path, title: str) -> None:
    n = len(show["image"])
    cols = 3 + len(heads)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.8), squeeze=False)
    for r in range(n):
        panels = [("image", show["image"][r], None), ("true mask", show["mask"][r], "gray"),
                  (f"class map\n(pred: {show['pred'][r]})", show["class"][r], "bwr")]
        panels += [(k, v[r], "bwr") for k, v in heads.items()]
        for c, (name, arr, cmap) in enumerate(panels):
            ax = axes[r][c]
            if cmap == "bwr":
                v = float(np.abs(arr).max()) or 1.0
                ax.imshow(show["image"][r], alpha=0.35)
                ax.imshow(arr, cmap=cmap, vmin=-v, vmax=v, alpha=0.75)
            else:
                ax.imshow(arr, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or c == 2:
                ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.9 * n + 0.8)))
    save_figure(fig, out_path)


def plot_neighbours(grid, out_path, title: str) -> None:
    k = len(grid[0][2]) if grid else 0
    fig, axes = plt.subplots(len(grid), k + 1, figsize=(1.3 * (k + 1) + 1.6, 1.3 * len(grid) + 0.6),
                             squeeze=False)
    for r, (label, q, nn) in enumerate(grid):
        for c, im in enumerate([q] + list(nn)):
            ax = axes[r][c]
            ax.imshow(np.asarray(im))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
                for s in ax.spines.values():
                    s.set_color("red")
                    s.set_linewidth(2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (1.3 * len(grid) + 0.6)))
    save_figure(fig, out_path)


def plot_spurious(table: pd.DataFrame, summary: Mapping, out_path, title: str) -> None:
    groups = list(dict.fromkeys(table["group"]))
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups), 3.4))
    for j, cond in enumerate(("before", "after")):
        t = table[table["condition"] == cond].set_index("group").reindex(groups)
        ax.bar(x + (j - 0.5) * 0.38, 100 * t["accuracy"], 0.38,
               label=f"{cond}: mean {100 * summary[cond]['mean']:.1f} %, worst group "
                     f"{100 * summary[cond]['worst']:.1f} %")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n(n={int(n)})" for g, n in
                        zip(groups, table[table['condition'] == 'before'].set_index('group')
                            .reindex(groups)['n'])], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path)
