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
