"""Comparison reports across pipeline runs: a table (Parquet + Markdown) and figures.

Pure functions over finished artifacts; the flows call them and log what they write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from stages.lib import figures
from stages.lib.artifacts import read_manifest
from stages.lib.catalog import ITERATIONS_FILE, METRICS_FILE
from stages.lib.seed_study import SEED_ITERATIONS, SEED_SELF_TRAINING


def self_training_row(self_train: Path, evaluation: Path, baseline_test_accuracy: float) -> dict:
    """One configuration's line: its selection, the kept iteration's validation numbers, test accuracy."""
    config = read_manifest(self_train)["config"]
    metrics = json.loads((self_train / METRICS_FILE).read_text())
    iterations = pd.read_parquet(self_train / ITERATIONS_FILE)
    kept = iterations.iloc[metrics["best_iteration"]]
    test_accuracy = json.loads((evaluation / METRICS_FILE).read_text())["test_accuracy"]
    row = {
        "threshold": config["selection"]["threshold"],
        "iterations": config["iterations"],
        "best_iteration": metrics["best_iteration"],
        "samples_used": metrics["final_samples_used"],  # selected in the last iteration, as the seed counts
        "pseudo_label_accuracy": float(iterations["pseudo_label_accuracy"].iloc[-1]),
        "train_accuracy": float(kept["train_accuracy"]),
        "train_loss": float(kept["train_loss"]),
        "val_accuracy": metrics["best_val_accuracy"],
        "val_loss": metrics["best_val_loss"],
        "test_accuracy": test_accuracy,
        "vs_baseline_pts": round(100 * (test_accuracy - baseline_test_accuracy), 2),
        "train_seconds": metrics["train_seconds"],
    }
    if config["iterations"] == SEED_ITERATIONS:
        row.update(SEED_SELF_TRAINING.get(row["threshold"], {}))
    return row


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; fractions in 0..1 columns named *accuracy become percentages."""
    def cell(column: str, value) -> str:
        if pd.isna(value):
            return "—"
        if column.endswith("accuracy"):
            return f"{value:.2%}"
        if isinstance(value, float) and (value.is_integer() or abs(value) >= 1000):  # counts with gaps, seconds
            return f"{value:,.0f}"
        if isinstance(value, float):
            return f"{value:.4g}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in row.items()) + " |" for row in table.to_dict("records")]
    return "\n".join(lines) + "\n"


def write_self_training_report(output: Path, self_trains: Sequence[Path], evaluations: Sequence[Path],
                               baseline_evaluation: Path) -> pd.DataFrame:
    """comparison.{parquet,md} and figures/{iterations,comparison}.png into ``output`` (must exist)."""
    baseline_test = json.loads((baseline_evaluation / METRICS_FILE).read_text())["test_accuracy"]
    table = pd.DataFrame([self_training_row(st, ev, baseline_test) for st, ev in zip(self_trains, evaluations)])
    table.to_parquet(output / "comparison.parquet", index=False)
    (output / "comparison.md").write_text(
        f"# Self-training configurations\n\nBaseline test accuracy: **{baseline_test:.2%}**. "
        "Kept model = best validation iteration; samples used = pseudo-labels selected in the last iteration. "
        "`seed_*`: the seed study's numbers at 4 iterations.\n\n" + markdown_table(table)
    )
    (output / "figures").mkdir()
    iteration_tables: Mapping[str, pd.DataFrame] = {
        f"t={row.threshold}, {row.iterations} it.": pd.read_parquet(st / ITERATIONS_FILE)
        for row, st in zip(table.itertuples(), self_trains)
    }
    figures.self_training_iterations(iteration_tables, output / "figures" / "iterations.png")
    figures.threshold_comparison(table, baseline_test, output / "figures" / "comparison.png")
    return table
