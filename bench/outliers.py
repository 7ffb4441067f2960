"""The outlier stage on a real split: kept fraction per scorer and nu, beside the seed's 89.8%.

Runs ``stages.outliers`` (the same ``run`` every launcher calls) once per (scorer, nu) on a
finished split artifact; ``one_class_svm`` reads the frozen features of a finished baseline.
Writes ``bench/results/outliers-<preset>.{json,md}`` and copies the figures of each run into
``docs/outliers/<scorer>-nu<nu>/``.

    .venv/bin/python bench/outliers.py --split DIR --model DIR --nu 0.9 0.1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipelines.config import load_pipeline_config
from stages import outliers
from stages.lib.catalog import OUTLIER_SCORES_FILE
from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parent.parent / "docs" / "outliers"
SEED_KEPT = 0.898  # docs/seed-study.md, exercise 5: 89.8% typical at v = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--split", type=Path, required=True, help="a finished split artifact")
    parser.add_argument("--model", type=Path, required=True, help="a finished baseline artifact (one_class_svm's features)")
    parser.add_argument("--nu", type=float, nargs="+", default=[0.9, 0.1])
    parser.add_argument("--scorers", nargs="+", default=["one_class_nn", "one_class_svm"])
    args = parser.parse_args()
    base = load_pipeline_config(args.preset).outliers
    rows = []
    for scorer in args.scorers:
        for nu in args.nu:
            config = base.model_copy(update={"scorer": scorer, "nu": nu})
            output = Path(tempfile.mkdtemp()) / "outliers"
            started = time.perf_counter()
            outliers.STAGE.execute(config, {"split": args.split, "model": args.model} if scorer == "one_class_svm" else {"split": args.split},
                         output)
            seconds = round(time.perf_counter() - started, 1)
            metrics = json.loads((output / "metrics.json").read_text())
            figures = DOCS / f"{scorer}-nu{nu}"
            shutil.rmtree(figures, ignore_errors=True)
            shutil.copytree(output / "figures", figures)
            rows.append({"scorer": scorer, "nu": nu, **metrics, "seconds": seconds, "figures": str(figures.relative_to(DOCS.parent.parent)),
                         "scores": pd.read_parquet(output / OUTLIER_SCORES_FILE)})
            print({k: v for k, v in rows[-1].items() if k != "scores"}, flush=True)
    write_results(args, rows, agreement(rows))


def agreement(rows: list[dict]) -> list[dict]:
    """Per nu, how far the scorers agree: same kept/dropped decision, the dropped images they share, and
    the rank correlation of their scores."""
    found = []
    for nu in sorted({row["nu"] for row in rows}):
        scored = [row for row in rows if row["nu"] == nu]
        for first, second in zip(scored, scored[1:]):
            a, b = first["scores"], second["scores"]
            dropped = (~a["kept"] & ~b["kept"]).sum()
            found.append({"nu": nu, "scorers": f"{first['scorer']} / {second['scorer']}",
                          "same_decision": float((a["kept"] == b["kept"]).mean()),
                          "dropped_by_both": int(dropped), "dropped_by_first": int((~a["kept"]).sum()),
                          "score_rank_correlation": float(a["score"].corr(b["score"], method="spearman"))})
    return found


def write_results(args, rows: list[dict], agreements: list[dict]) -> None:
    rows = [{k: v for k, v in row.items() if k != "scores"} for row in rows]
    summary = {"preset": args.preset, "command": "python bench/outliers.py " + " ".join(sys.argv[1:]),
               "machine": describe(),
               "seed_kept_fraction": SEED_KEPT, "rows": rows, "agreement": agreements}
    RESULTS.mkdir(exist_ok=True)
    name = f"outliers-{args.preset}"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Outlier filter, `{args.preset}` preset: kept fraction of the unlabeled images", "",
             f"The seed study kept {SEED_KEPT:.1%} at v = 0.9.", "",
             "| scorer | nu | labeled images outside | unlabeled kept | kept | seconds | figures |", "|---|---|---|---|---|---|---|",
             *(f"| {r['scorer']} | {r['nu']} | {r['train_outside_fraction']:.1%} | {r['kept_fraction']:.1%} | {r['kept']:,} | "
               f"{r['seconds']} | `{r['figures']}` |" for r in rows),
             "", "Agreement of the scorers on the same images:", "",
             "| nu | scorers | same keep/drop decision | dropped by both | dropped by the first | score rank correlation |",
             "|---|---|---|---|---|---|",
             *(f"| {a['nu']} | {a['scorers']} | {a['same_decision']:.1%} | {a['dropped_by_both']:,} | {a['dropped_by_first']:,} | "
               f"{a['score_rank_correlation']:+.3f} |" for a in agreements),
             "", f"Command: `{summary['command']}`", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
