"""Study 004's figures (each draws a table written beside it)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...core.figures import plt, save_figure


def plot_compare(table: pd.DataFrame, out_path) -> None:
    """Zero-shot accuracy and cosine silhouette per task, one bar per model; the legend gives
    each model's mean |cos| of its image and text projections (lower = purer)."""
    models = list(dict.fromkeys(table["model"]))
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        t = table[table.model == m].set_index("task").reindex(tasks)
        label = (f"{m} (|cos| image {t['image_mean_abs'].iloc[0]:.3f}, "
                 f"text {t['text_mean_abs'].iloc[0]:.3f})")
        pos = np.arange(len(tasks)) + (i - (len(models) - 1) / 2) * width
        axes[0].bar(pos, 100 * t["accuracy"], width, label=label)
        axes[1].bar(pos, t["silhouette"], width)
    for ax, name in zip(axes, ("zero-shot accuracy (%)", "cosine silhouette of image features")):
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=20, fontsize=7)
        ax.set_ylabel(name)
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Feature purity: models compared (lower |cos| = purer projection)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_pruning(sweep: pd.DataFrame, out_path) -> None:
    """Per model (rows) and projection scored (columns): accuracy, averaged over tasks, against
    the k dimensions kept -- the purest, the least pure, and random's band (min to max over
    seeds) -- with the pure-minus-impure gap in points written at each k; the dotted line is
    the unpruned embedding."""
    models = list(dict.fromkeys(sweep["model"]))
    bys = [b for b in ("image", "text") if b in set(sweep["by"])]
    fig, axes = plt.subplots(len(models), len(bys), figsize=(4.2 * len(bys), 3.0 * len(models)),
                             squeeze=False)
    for i, m in enumerate(models):
        s = sweep[sweep.model == m]
        full = 100 * s[s["mode"] == "all"]["accuracy"].mean()
        for j, by in enumerate(bys):
            ax = axes[i, j]
            t = s[s["by"] == by]
            mean = t.groupby(["mode", "k", "seed"])["accuracy"].mean().reset_index()
            pure = mean[mean["mode"] == "pure"].set_index("k")["accuracy"] * 100
            impure = mean[mean["mode"] == "impure"].set_index("k")["accuracy"] * 100
            rnd = mean[mean["mode"] == "random"].groupby("k")["accuracy"]
            ax.fill_between(rnd.min().index, 100 * rnd.min(), 100 * rnd.max(), color="grey",
                            alpha=0.3, label="random (min-max over seeds)")
            ax.plot(pure.index, pure, "o-", label="purest kept")
            ax.plot(impure.index, impure, "s-", label="least pure kept")
            ax.axhline(full, ls=":", color="k", lw=0.8, label="all dimensions")
            for k in pure.index:
                ax.annotate(f"{pure[k] - impure[k]:+.1f}", (k, max(pure[k], impure[k])),
                            textcoords="offset points", xytext=(0, 4), fontsize=6,
                            ha="center")
            ax.set_title(f"{m}: scored on the {by} projection", fontsize=8)
            ax.set_xlabel("embedding dimensions kept (k)")
            ax.set_ylabel("accuracy (%), mean of tasks")
    axes[0, 0].legend(fontsize=6, loc="lower right")
    fig.suptitle("Pruning by purity: numbers are the pure-minus-impure gap (points)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path)


def plot_misalignment(table: pd.DataFrame, out_path) -> None:
    """Left: mean |cos| between the output neurons of the text and image projections after
    fine-tuning on captions a fraction Cs of which were swapped for similar ones; right:
    zero-shot accuracy averaged over tasks.  Means over seeds with 95 % t intervals."""
    from ...core.stats import mean_ci

    acc_cols = [c for c in table.columns if c.startswith("accuracy:")]
    t = table.assign(accuracy=table[acc_cols].mean(axis=1) * 100)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for model, g in t.groupby("model", sort=False):
        for col, ax, style, name in (("text_mean_abs", left, "o-", "text"),
                                     ("image_mean_abs", left, "s--", "image"),
                                     ("accuracy", right, "o-", None)):
            stats = [(cs, mean_ci(v[col].to_numpy())) for cs, v in g.groupby("fraction")]
            xs = [cs for cs, _ in stats]
            ys = np.array([s["mean"] for _, s in stats])
            lo = np.array([s["ci_low"] for _, s in stats])
            hi = np.array([s["ci_high"] for _, s in stats])
            label = f"{model}, {name} projection" if name else model
            ax.plot(xs, ys, style, label=label)
            if np.isfinite(lo).all():
                ax.fill_between(xs, lo, hi, alpha=0.2)
    left.set_xlabel("misaligned captions Cs")
    left.set_ylabel("mean |cos| between output neurons")
    right.set_xlabel("misaligned captions Cs")
    right.set_ylabel("zero-shot accuracy (%), mean of tasks")
    left.legend(fontsize=6)
    right.legend(fontsize=6)
    n = int(t.groupby(["model", "fraction"]).size().max()) if len(t) else 0
    fig.suptitle(f"Caption misalignment, projections fine-tuned ({n} seeds, 95 % intervals)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path)
