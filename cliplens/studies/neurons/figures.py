"""Study 003's figures (each draws a table that is written beside it)."""

from __future__ import annotations

import pandas as pd

from ...core.figures import plt, save_figure


def plot_effects(table: pd.DataFrame, out_path, title: str) -> None:
    """Left: accuracy with every unit replaced by its first component (one point at n = 0 on
    the axis, drawn as a horizontal line) or by its first n sparse texts; right: accuracy with
    the units below a percentile of mean top-k norm mean-ablated.  Dashed: the model; dotted:
    chance."""
    base = float(table.loc[table["what"] == "original", "accuracy"].iloc[0])
    chance = float(table["chance"].iloc[0])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    texts = table[table["what"] == "texts"].sort_values("n_texts")
    left.plot(texts["n_texts"], 100 * texts["accuracy"], marker="o", label="sparse texts")
    comp = table[table["what"] == "component"]
    if len(comp):
        left.axhline(100 * float(comp["accuracy"].iloc[0]), color="tab:green",
                     label="first component")
    left.set_xscale("log", base=2)
    left.set_xlabel("texts per unit (n)")
    left.set_title("every unit replaced", fontsize=9)
    abl = table[table["what"] == "ablated"].sort_values("percentile")
    right.plot(abl["percentile"], 100 * abl["accuracy"], marker="o", color="tab:red",
               label="below percentile mean-ablated")
    for kept, p, a in zip(abl["units_kept"], abl["percentile"], abl["accuracy"]):
        right.annotate(f"{int(kept)}", (p, 100 * a), textcoords="offset points", xytext=(0, 5),
                       fontsize=7, ha="center")
    right.set_xlabel("percentile of mean top-k norm (units kept annotated)")
    right.set_title("weak units mean-ablated", fontsize=9)
    for ax in (left, right):
        ax.axhline(100 * base, color="black", ls="--", label="model")
        ax.axhline(100 * chance, color="grey", ls=":", label="chance")
        ax.set_ylim(0, 100)
        ax.set_ylabel("zero-shot accuracy (%)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_retrieval(panels, out_path, title: str) -> None:
    """One row per panel ``(label, images [k] uint8 [S, S, 3], values [k])``: its top images,
    each captioned with its value (activation along the component, or centred norm)."""
    k = max(len(p[1]) for p in panels)
    fig, axes = plt.subplots(len(panels), k, figsize=(1.1 * k, 1.45 * len(panels) + 0.5),
                             squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.03, top=1 - 0.5 / fig.get_figheight(),
                        wspace=0.05, hspace=0.5)
    for r, (label, images, values) in enumerate(panels):
        for j in range(k):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j])
                ax.set_xlabel(f"{values[j]:.3g}", fontsize=6, labelpad=1)
            else:
                ax.axis("off")
        axes[r, 0].text(0, 1.06, label, transform=axes[r, 0].transAxes, fontsize=7, va="bottom")
    fig.suptitle(title, fontsize=8)
    save_figure(fig, out_path)


def plot_segmentation(show, maps, table: pd.DataFrame, out_path, title: str,
                      labels: bool = False) -> None:
    """Columns: the image (with the predicted class), its true mask, and the predicted class's
    map from each set of pairs (``maps``: name -> [n, S, S]), outlined where it is above its
    mean (the segmentation scored); rows: images.  With ``labels`` the masks and maps are
    label maps (class per pixel, 255 ignored), drawn with one colour per class.  The scores are
    in the title of each column."""
    import numpy as np

    names = list(maps)
    n = len(show["image"])
    fig, axes = plt.subplots(max(n, 1), 2 + len(names), figsize=(2.0 * (2 + len(names)),
                                                                  2.0 * max(n, 1) + 0.5),
                             squeeze=False)
    score = {r["method"]: r for _, r in table.iterrows()}
    for i in range(n):
        axes[i, 0].imshow(show["image"][i])
        axes[i, 0].set_title(f"predicted: {show['class'][i]}", fontsize=7)
        if labels:
            for j, m in enumerate([show["mask"][i]] + [maps[k][i] for k in names]):
                axes[i, 1 + j].imshow(np.ma.masked_equal(m, 255), cmap="tab20",
                                      interpolation="nearest", vmin=0, vmax=59)
            continue
        axes[i, 1].imshow(show["mask"][i], cmap="gray")
        for j, name in enumerate(names):
            m = maps[name][i]
            axes[i, 2 + j].imshow(m, cmap="viridis")
            axes[i, 2 + j].contour(m > m.mean(), levels=[0.5], colors="white", linewidths=0.8)
    for j, name in enumerate(["image", "true mask"] + names):
        head = name
        if name in score:
            head += f"\nmIoU {score[name]['miou']:.2f}, pixel acc {score[name]['pixel_accuracy']:.2f}"
        axes[0, j].set_title((axes[0, j].get_title() + "\n" if j == 0 else "") + head, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    prior = score.get("centre prior")
    if prior is not None:
        title += f"; centre prior mIoU {prior['miou']:.2f}"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_shift(table: pd.DataFrame, out_path, title: str, summary) -> None:
    """Mean activation of the concept's units per year (95 % t interval) and, on the right
    axis, the concept's true share where known; the correlations in the legend."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    ax.errorbar(table["year"], table["activation"],
                yerr=[table["activation"] - table["ci_low"], table["ci_high"] - table["activation"]],
                marker="o", capsize=3, label=f"units' activation (r with year "
                                             f"{summary['vs_year']['r']:.2f})")
    ax.set_xlabel("year")
    ax.set_ylabel("mean activation along the component")
    lines, labels = ax.get_legend_handles_labels()
    if table["true_share"].notna().any():
        right = ax.twinx()
        c = summary.get("vs_true_share", {})
        right.plot(table["year"], 100 * table["true_share"], color="tab:orange", marker="s",
                   label=f"true share (r {c.get('r', float('nan')):.2f}, 95 % "
                         f"[{c.get('r_low', float('nan')):.2f}, {c.get('r_high', float('nan')):.2f}])")
        right.set_ylabel("true share of the concept (%)")
        more = right.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_evidence(table: pd.DataFrame, factors, out_path, title: str) -> None:
    """Counts of units by the factor their texts name (rows; "none" when no text names one)
    and the factor that explains most of their activation (columns); the diagonal agrees."""
    import numpy as np

    rows = list(factors) + ["none"]
    counts = np.zeros((len(rows), len(factors)), dtype=int)
    for named, probe in zip(table["text_factor"], table["probe_factor"]):
        counts[rows.index(named if isinstance(named, str) else "none"), factors.index(probe)] += 1
    fig, ax = plt.subplots(figsize=(1.1 * len(factors) + 2.4, 0.55 * len(rows) + 1.6))
    ax.imshow(counts, cmap="Blues")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if v > counts.max() / 2 else "black")
    ax.set_xticks(range(len(factors)), factors, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("factor explaining most of the activation (held-out R²)")
    ax.set_ylabel("factor its sparse texts name")
    ax.set_title(title, fontsize=7, wrap=True)
    fig.tight_layout()
    save_figure(fig, out_path)
