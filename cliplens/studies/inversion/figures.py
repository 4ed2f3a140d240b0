"""Study 000's figures: ``v1_vs_v2.png`` (similarity against resolution, SigLIP vs SigLIP2),
``reconstructions.png`` (held-out images and their reconstructions) and one figure per colour
operator task (examples and the operators' eigenvalues)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from ...core.figures import plt, save_figure
from .colour import OPERATOR_TASKS

def plot_v1_vs_v2(summary, out_path: str | os.PathLike, *, title: str | None = None) -> None:
    """Similarity against input resolution, one line per (group, variant), one panel per scorer,
    error bars = 95 % t confidence intervals.  Groups get colours; colour-variant lines are solid
    with filled markers, grayscale ones dashed with open markers."""
    scorers = list(dict.fromkeys(summary["scorer"]))
    groups = list(dict.fromkeys(summary["group"]))
    variants = list(dict.fromkeys(summary["variant"]))
    palette = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]
    res_all = sorted(set(int(r) for r in summary["resolution"]))
    fig, axes = plt.subplots(1, len(scorers), figsize=(5.2 * len(scorers), 4.2), squeeze=False,
                             sharey=False)
    n_txt = sorted(set(int(n) for n in summary["n"]))
    for ax, scorer in zip(axes[0], scorers):
        sub = summary[summary.scorer == scorer]
        for gi, group in enumerate(groups):
            for vi, variant in enumerate(variants):
                d = sub[(sub.group == group) & (sub.variant == variant)].sort_values("resolution")
                if d.empty:
                    continue
                pos = np.array([res_all.index(int(r)) for r in d.resolution], dtype=float)
                pos += (gi - (len(groups) - 1) / 2) * 0.06 + (vi - (len(variants) - 1) / 2) * 0.02
                err = np.vstack([d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]])
                gray = variant == "grayscale"
                ax.errorbar(pos, d["mean"], yerr=err, color=palette[gi % len(palette)],
                            linestyle="--" if gray else "-", marker="o", capsize=3,
                            markerfacecolor="white" if gray else palette[gi % len(palette)],
                            label=f"{group}, {variant}")
        ax.set_xticks(range(len(res_all)))
        ax.set_xticklabels([f"{r}px" for r in res_all])
        ax.set_xlabel("extractor input resolution")
        ax.set_ylabel("cosine similarity (original vs reconstruction)")
        ax.set_title(f"scorer: {scorer}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or (
        "Reconstruction from patch tokens: SigLIP vs SigLIP2\n"
        f"mean cosine similarity of scorer embeddings over n = {', '.join(map(str, n_txt))} "
        "held-out images, error bars: 95 % t-CI"), fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=130)


def plot_reconstructions(originals: Sequence[np.ndarray], columns: Sequence[tuple[str, np.ndarray]],
                         out_path: str | os.PathLike, *, title: str = "") -> None:
    """Grid: one row per held-out image; first column the original, then one column per
    extractor (``columns``: (label, uint8 [k, S, S, 3]))."""
    k = len(originals)
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(k, ncol, figsize=(1.45 * ncol, 1.5 * k + 0.9), squeeze=False)
    for i in range(k):
        for j in range(ncol):
            ax = axes[i, j]
            img = originals[i] if j == 0 else columns[j - 1][1][i]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else columns[j - 1][0], fontsize=7)
    fig.suptitle(title or "Held-out images and their reconstructions from each extractor's "
                 "patch tokens", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=130)


def plot_operator_figure(task: str, rows, arrays: Mapping[str, np.ndarray],
                         out_path: str | os.PathLike, *, model: str = "",
                         eigen_kinds: Sequence[str] = ()) -> None:
    """Examples (rows) x [source image, truly transformed image, reconstruction from f(source),
    from f(transformed), from each operator applied to f(source)], with each column's feature
    R^2 and image MSE in its title; with ``eigen_kinds``, a panel of those operators'
    eigenvalues in the complex plane with the unit circle."""
    src, tgt, title = OPERATOR_TASKS[task]
    by_kind = {r["kind"]: r for r in rows if r["task"] == task}
    kinds = [k for k in by_kind if k not in ("none", "true")]
    cols = [("source image\n" + src, arrays[f"{task}/source"]),
            ("truly transformed\n" + tgt, arrays[f"{task}/target"])]
    names = {"none": "recon f(source)\n(no operator)", "true": "recon f(transformed)\n(ceiling)"}
    cols[0] = (cols[0][0] + "\n\n\n", cols[0][1])
    cols[1] = (cols[1][0] + "\n\n\n", cols[1][1])
    for kind in ["none", "true", *kinds]:
        r = by_kind[kind]
        label = names.get(kind, f"recon of\n{kind}(f(source))")
        cols.append((f"{label}\nfeature R² = {r['r2']:.3f}\nMSE→t = {r['mse_vs_transformed']:.4f}"
                     f"\nMSE→s = {r['mse_vs_original']:.4f}", arrays[f"{task}/recon/{kind}"]))
    k = len(cols[0][1])
    w_img = 1.45 * len(cols)
    w_eig = 4.6 if eigen_kinds else 0.0
    fig = plt.figure(figsize=(w_img + w_eig, 1.4 * k + 1.7))
    if eigen_kinds:
        left, right = fig.subfigures(1, 2, width_ratios=[w_img, w_eig], wspace=0.02)
    else:
        left, right = fig, None
    axes = left.subplots(k, len(cols), squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for j, (label, imgs) in enumerate(cols):
        for i in range(k):
            ax = axes[i, j]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=6)
    if right is not None:
        ax = right.subplots()
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(t), np.sin(t), color="0.6", lw=0.8, label="unit circle")
        markers = {"procrustes": "o", "symmetric": "s", "linear": "^", "affine": "v"}
        sizes = {"symmetric": 40}
        colours = {"procrustes": "tab:blue", "symmetric": "tab:orange", "linear": "tab:green",
                   "affine": "tab:red"}
        for kind in eigen_kinds:
            key = f"{task}/{kind}/eig"
            if key not in arrays:
                continue
            lam = arrays[key]
            r = by_kind[kind]
            c = colours.get(kind, "tab:gray")
            ax.scatter(lam.real, lam.imag, s=sizes.get(kind, 12), alpha=0.6,
                       marker=markers.get(kind, "o"),
                       facecolors="none" if kind == "symmetric" else c, edgecolors=c,
                       label=f"{kind}: {int(r['eig_near_plus_one'])} near +1, "
                             f"{int(r['eig_near_minus_one'])} near −1 "
                             f"(of {int(r['eig_n'])}; |λ±1| < 0.1)")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_aspect("equal")
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ")
        ax.set_title("eigenvalues of the fitted operators W\n(an involution has λ = ±1)",
                     fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.suptitle(f"{title} in feature space{f' of {model}' if model else ''}: operators fitted on "
                 "train token pairs, shown on held-out images\n(R² of operated vs true "
                 "transformed features; MSE of reconstructions against the transformed (→t) and "
                 "the source (→s) image)", fontsize=9)
    save_figure(fig, out_path, dpi=130)
