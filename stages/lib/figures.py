"""PNG figures built with matplotlib's object API (no pyplot: no global state, no display)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def learning_curves(history: pd.DataFrame, best_epoch: int, path: Path) -> Path:
    """Train vs validation loss and accuracy per epoch (the seed's figure 2); for self-training,
    epochs count across iterations and shaded bands mark the iterations (figures 3-4)."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axis, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        axis.plot(history["epoch"], history[metric], label="train")
        axis.plot(history["epoch"], history[f"val_{metric}"], label="validation")
        if "iteration" in history:
            for iteration, epochs in history.groupby("iteration")["epoch"]:
                if iteration % 2:
                    axis.axvspan(epochs.min() - 0.5, epochs.max() + 0.5, color="grey", alpha=0.1, lw=0)
        kept = f"epoch {best_epoch}" if best_epoch else "the input model"
        axis.axvline(best_epoch, color="grey", linestyle=":", label=f"kept ({kept})")
        axis.set(xlabel="epoch", ylabel=metric, title=metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=110)
    return path


NAMED_TICKS = 40  # classes up to which the axes name each one; above, names would overlap


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix, true class down, predicted class across."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(8, 7), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(rates, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axis.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (row-normalised)")
    if len(classes) <= NAMED_TICKS:
        ticks = np.arange(len(classes))
        axis.set_xticks(ticks, classes, rotation=90, fontsize=7)
        axis.set_yticks(ticks, classes, fontsize=7)
    figure.colorbar(image, ax=axis, shrink=0.8)
    figure.savefig(path, dpi=110)
    return path


def _layer_rows(model: keras.Model, depth: int = 0) -> list[tuple[int, str, str, int]]:
    """(depth, name and type, output shape, parameters) for every layer, nested models expanded."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = getattr(layer, "output", None)
        shape = tuple(shape.shape[1:]) if shape is not None and hasattr(shape, "shape") else ""
        rows.append((depth, f"{layer.name} ({type(layer).__name__})", str(shape), layer.count_params()))
        if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential):
            rows.extend(_layer_rows(layer, depth + 1))
    return rows


def network_diagram(model: keras.Model, path: Path) -> Path:
    """The network as a stack of boxes with output shapes and parameter counts (the seed's figure 1)."""
    rows = _layer_rows(model)
    figure = Figure(figsize=(7, 0.32 * len(rows) + 1), layout="constrained")
    axis = figure.subplots()
    axis.set_axis_off()
    axis.set_xlim(0, 1)
    axis.set_ylim(len(rows), -1)
    axis.set_title(f"{model.name}: {model.count_params():,} parameters")
    for row, (depth, name, shape, params) in enumerate(rows):
        colour = "#dbe9f6" if depth else "#f6e3c5"
        axis.text(0.02 + 0.04 * depth, row, name, va="center", family="monospace", fontsize=8,
                  bbox={"boxstyle": "round", "facecolor": colour, "edgecolor": "#777"})
        axis.text(0.68, row, shape, va="center", family="monospace", fontsize=8)
        axis.text(0.98, row, f"{params:,}", va="center", ha="right", family="monospace", fontsize=8)
    figure.savefig(path, dpi=110)
    return path


def self_training_iterations(tables: dict[str, pd.DataFrame], path: Path) -> Path:
    """Per iteration and configuration: validation accuracy, pseudo-labels selected and their accuracy.

    ``tables`` maps a legend label to an iterations table (iteration 0 = the input model).
    """
    figure = Figure(figsize=(13, 4), layout="constrained")
    panels = figure.subplots(1, 3)
    for label, table in tables.items():
        trained = table[table["iteration"] > 0]
        panels[0].plot(table["iteration"], table["val_accuracy"], marker="o", label=label)
        panels[1].plot(trained["iteration"], trained["selected"], marker="o", label=label)
        panels[2].plot(trained["iteration"], trained["pseudo_label_accuracy"], marker="o", label=label)
    titles = ("validation accuracy (0 = input model)", "pseudo-labels selected", "pseudo-label accuracy (audit)")
    for axis, title in zip(panels, titles):
        axis.set(xlabel="iteration", title=title)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=110)
    return path


def threshold_comparison(table: pd.DataFrame, baseline_accuracy: float, path: Path) -> Path:
    """Validation and test accuracy of each self-training configuration against the baseline
    (the seed's figure 5); ``table`` has threshold, iterations, val_accuracy, test_accuracy."""
    figure = Figure(figsize=(max(6, 1.3 * len(table) + 2), 4), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(table))
    for offset, column, name in ((-0.2, "val_accuracy", "validation"), (0.2, "test_accuracy", "test")):
        bars = axis.bar(positions + offset, table[column], width=0.4, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
    axis.axhline(baseline_accuracy, color="black", linestyle="--", label=f"baseline test {baseline_accuracy:.3f}")
    axis.set_xticks(positions, [f"t={t}\n{n} it." for t, n in zip(table["threshold"], table["iterations"])])
    axis.set(ylabel="accuracy", title="self-training configurations")
    axis.legend(loc="lower right")
    figure.savefig(path, dpi=110)
    return path


def thresholds_per_unlabeled_set(table: pd.DataFrame, baseline_accuracy: float, seed_accuracy: dict[float, float],
                                 path: Path) -> Path:
    """Self-training's test top-1 per confidence threshold, a bar per unlabeled set (mean, whiskers ± std
    over training seeds), against our baseline and the seed study's result at that threshold (the seed's
    figure 5); ``table`` has threshold, unlabeled, test_mean, test_std."""
    thresholds = sorted(table["threshold"].unique())
    sets = list(dict.fromkeys(table["unlabeled"]))
    figure = Figure(figsize=(max(8, 1.6 * len(thresholds) + 4), 4), layout="constrained")
    axis = figure.subplots()
    positions, width = np.arange(len(thresholds)), 0.8 / len(sets)
    for i, unlabeled in enumerate(sets):
        rows = table[table["unlabeled"] == unlabeled].set_index("threshold").reindex(thresholds)
        bars = axis.bar(positions + (i - (len(sets) - 1) / 2) * width, rows["test_mean"], width,
                        yerr=rows["test_std"].fillna(0), capsize=3, label=f"ours, {unlabeled} unlabeled")
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
    axis.plot(positions, [seed_accuracy.get(t, np.nan) for t in thresholds], "k^", label="the seed study")
    axis.axhline(baseline_accuracy, color="black", linestyle="--", label=f"our baseline {baseline_accuracy:.3f}")
    axis.set_xticks(positions, [f"t={t:g}" for t in thresholds])
    axis.set(xlabel="confidence threshold", ylabel="test top-1", title="self-training per threshold")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars, not over them
    figure.savefig(path, dpi=110)
    return path


def image_pairs(top: np.ndarray, bottom: np.ndarray, titles: tuple[str, str], path: Path, columns: int = 8) -> Path:
    """Two rows of images per group: ``top[i]`` above ``bottom[i]`` (0..255 values, (N, 32, 32, 3))."""
    count = min(len(top), 2 * columns)
    rows = 2 * -(-count // columns)
    figure = Figure(figsize=(columns * 1.1, rows * 1.15), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for i in range(count):
        row, column = 2 * (i // columns), i % columns
        for offset, images in enumerate((top, bottom)):
            axes[row + offset, column].imshow(np.clip(images[i], 0, 255).astype(np.uint8), interpolation="nearest")
        if column == 0:
            for offset, title in enumerate(titles):
                axes[row + offset, 0].set_title(title, fontsize=7, loc="left")
    figure.savefig(path, dpi=110)
    return path


def similarity_matrix(similarity: np.ndarray, path: Path) -> Path:
    """Cosine similarities of 2N embeddings (view 1 of N images, then view 2): the positives are
    the two off-diagonals N away from the diagonal (the seed's figure 10)."""
    figure = Figure(figsize=(6, 5), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(similarity, cmap="magma", vmin=-1, vmax=1, interpolation="nearest")
    half = len(similarity) // 2
    axis.axhline(half - 0.5, color="white", lw=0.5)
    axis.axvline(half - 0.5, color="white", lw=0.5)
    axis.set(title=f"cosine similarity of {half} view pairs", xlabel="view 1 | view 2", ylabel="view 1 | view 2")
    figure.colorbar(image, ax=axis, shrink=0.8)
    figure.savefig(path, dpi=110)
    return path


def pretraining_curves(history: pd.DataFrame, path: Path) -> Path:
    """Per epoch: every logged training metric, and the k-NN probe's validation accuracy."""
    metrics = [c for c in history.columns if c not in ("epoch", "learning_rate", "epoch_seconds", "timestamp_ms")]
    figure = Figure(figsize=(4 * len(metrics), 3.5), layout="constrained")
    for axis, metric in zip(np.atleast_1d(figure.subplots(1, len(metrics))), metrics):
        rows = history[["epoch", metric]].dropna()
        axis.plot(rows["epoch"], rows[metric], marker="o", markersize=3)
        axis.set(xlabel="epoch", title=metric)
        axis.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return path


def score_histogram(scores: np.ndarray, path: Path) -> Path:
    """Histogram of the unlabeled images' one-class scores, with the cut at 0 (kept: score >= 0)."""
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axis = figure.subplots()
    axis.hist(scores, bins=60, color="steelblue")
    axis.axvline(0, color="black", linestyle="--", label=f"cut: {(scores >= 0).mean():.1%} kept")
    axis.set(xlabel="score (> 0: inside the boundary)", ylabel="unlabeled images", title="one-class scores")
    axis.legend()
    figure.savefig(path, dpi=110)
    return path


def class_distribution(counts: pd.Series, path: Path) -> Path:
    """Images predicted per class (``counts``: images by class name), most frequent first."""
    ordered = counts.sort_values(ascending=False)
    figure = Figure(figsize=(max(6, 0.12 * len(ordered) + 2), 3.5), layout="constrained")
    axis = figure.subplots()
    axis.bar(np.arange(len(ordered)), ordered.to_numpy(), width=0.8)
    if len(ordered) <= NAMED_TICKS:
        axis.set_xticks(np.arange(len(ordered)), ordered.index, rotation=90, fontsize=7)
    axis.set(xlabel="predicted class", ylabel="images", title=f"predicted classes of {int(ordered.sum()):,} images")
    figure.savefig(path, dpi=110)
    return path


def kept_per_class(labels: np.ndarray, kept: np.ndarray, path: Path) -> Path:
    """Fraction of each true class's unlabeled images that were kept (audit labels, for the report only)."""
    classes = np.arange(int(labels.max()) + 1)
    fractions = np.array([kept[labels == c].mean() if (labels == c).any() else np.nan for c in classes])
    figure = Figure(figsize=(12, 3.5), layout="constrained")
    axis = figure.subplots()
    axis.bar(classes, fractions, width=0.8)
    axis.axhline(kept.mean(), color="black", linestyle="--", label=f"all classes {kept.mean():.1%}")
    axis.set(xlabel="true class", ylabel="kept fraction", title="kept unlabeled images per true class", ylim=(0, 1))
    axis.legend()
    figure.savefig(path, dpi=110)
    return path
