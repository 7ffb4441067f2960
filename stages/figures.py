"""PNG figures built with matplotlib's object API (no pyplot: no global state, no display)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def learning_curves(history: pd.DataFrame, best_epoch: int, path: Path) -> Path:
    """Train vs validation loss and accuracy per epoch (the seed's figure 2)."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axis, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        axis.plot(history["epoch"], history[metric], label="train")
        axis.plot(history["epoch"], history[f"val_{metric}"], label="validation")
        axis.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
        axis.set(xlabel="epoch", ylabel=metric, title=metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=110)
    return path


def confusion_matrix(matrix: np.ndarray, path: Path) -> Path:
    """Row-normalised confusion matrix, true class down, predicted class across."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(8, 7), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(rates, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axis.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (row-normalised)")
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
