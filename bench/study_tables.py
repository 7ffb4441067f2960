"""One results table from several studies' reports: mean ± std per experiment over every seed they hold.

A quick study of every pretraining mode is hours per training seed on a 2-core machine, so seeds
are measured by separate studies (often on separate machines, whose MLflow stores are gone). Each
`ssl-pipeline report` keeps its configuration runs in `runs.parquet`; this puts the given reports'
rows together. A (experiment, unlabeled set, seed) that two reports both hold must agree on test
accuracy (a cached baseline does); a disagreement is an error naming both reports. Writes
bench/results/<name>.{json,md}.

    .venv/bin/python bench/study_tables.py docs/study/quick-seed0-pretraining-unfreeze40 docs/study/... --name study-quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from pipelines.report import (
    NO_FILTERING_EFFECT,
    experiment_label,
    filtering_effect,
    mean_and_std,
    summary_table,
    with_optional_columns,
)

RESULTS = Path(__file__).parent / "results"
KEY = ["experiment", "threshold", "unlabeled", "seed"]  # threshold: self-training's, NaN for the others


def report_rows(reports: list[Path]) -> pd.DataFrame:
    """The configuration runs of every report, one row per (experiment, threshold, unlabeled set, seed), with the
    report each came from; ``preset`` and ``overrides`` say "not recorded" for reports older than them."""
    frames = []
    for report in reports:
        table = report / "runs.parquet"
        if not table.is_file():
            raise SystemExit(f"{table}: no such file; give the directory `ssl-pipeline report` wrote (report.md, runs.parquet)")
        rows = pd.read_parquet(table)
        frames.append(rows.assign(report=str(report), preset=rows.get("preset", "not recorded"),
                                  overrides=rows.get("overrides", "not recorded")))
    rows = pd.concat(frames, ignore_index=True)
    keyed = with_optional_columns(rows)  # reports older than a key column hold none
    for key, same in keyed.groupby(KEY, dropna=False):
        if same["test_accuracy"].nunique() > 1:
            raise SystemExit(f"{dict(zip(KEY, key))} differs between reports: "
                             + "; ".join(f"{r.report}: {r.test_accuracy:.2%}" for r in same.itertuples())
                             + ". Give only the reports of one configuration and machine type")
    return rows[~keyed.duplicated(KEY)].reset_index(drop=True)


def markdown(rows: pd.DataFrame, command: str) -> str:
    summary = summary_table(rows)
    baseline = summary.loc[summary["experiment"] == "baseline", "test_mean"]
    over = (lambda mean: f"{100 * (mean - baseline.iloc[0]):+.2f}") if len(baseline) else (lambda mean: "—")
    sources = rows.groupby("report", sort=False).agg(preset=("preset", "first"), overrides=("overrides", "first"),
                                                     runs=("seed", "size"))
    return "\n".join([
        "# Studies put together: test top-1 per experiment over every seed measured", "",
        "| experiment | unlabeled | seeds | test top-1 (mean ± std) | pts over the baseline | val top-1 | training min |",
        "|---|---|---|---|---|---|---|",
        *(f"| {experiment_label(r.experiment, r.threshold)} | {r.unlabeled} | {r.seeds} | {mean_and_std(r.test_mean, r.test_std)} | {over(r.test_mean)} | "
          f"{r.val_mean:.2%} | {r.minutes:.1f} |" for r in summary.itertuples()),
        "", "## Filtering", "", *(filtering_effect(rows) or [NO_FILTERING_EFFECT]),
        "", "| report | preset | overrides | rows used |", "|---|---|---|---|",
        *(f"| [{name}]({Path('../..') / name}/report.md) | {s.preset} | {s.overrides} | {s.runs} |"
          for name, s in sources.iterrows()),
        "", f"Command: `{command}`", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="directories written by `ssl-pipeline report`")
    parser.add_argument("--name", default="study-quick", help="results file name under bench/results/")
    args = parser.parse_args()
    rows = report_rows(args.reports)
    command = "python bench/study_tables.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    runs = rows.astype(object).where(rows.notna(), None).to_dict("records")  # NaN is not JSON: null
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=2) + "\n")
    text = markdown(rows, command)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
