"""Does averaging each image's prediction with its mirror image's help? Measured off the test set.

For each trained model: top-1 on the validation images and on the split's unlabeled images (scored
with their audit labels, which no stage trains on), from the single view and from the mean softmax
of the view and its mirror image (``stages.evaluate.view_probabilities``, what ``evaluate.flip_average``
does). Validation has 1,000 images and chose each model's epoch on the single view, so it is both
noisy and biased towards it; the 40,000 unlabeled images are neither for a model that never trained
on them (the table says which did). Writes ``bench/results/<--name>.{json,md}``.

    .venv/bin/python bench/flip_average.py --split DIR --models DIR [DIR ...] --name flip-average-quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from stages.evaluate import view_probabilities
from stages.lib import catalog
from stages.lib.catalog import load_classifier

RESULTS = Path(__file__).parent / "results"
UNLABELED_READ = "split/unlabeled.parquet"


def single_and_averaged(views: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 of the first view and of the mean of the views (V, N, C), and the standard error of their
    paired difference over the N images."""
    single = views[0].argmax(axis=1) == labels
    averaged = views.mean(axis=0).argmax(axis=1) == labels
    gain = averaged.astype(float) - single
    return {"single": float(single.mean()), "averaged": float(averaged.mean()),
            "gain_standard_error": float(gain.std(ddof=1) / np.sqrt(len(gain)))}


def measure(model_dir: Path, validation: catalog.ImageTable, unlabeled: catalog.ImageTable, audit_labels: np.ndarray) -> dict:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model = load_classifier(model_dir)
    return {"model": f"{manifest['stage']}/{model_dir.name}", "trained_on_unlabeled_images": UNLABELED_READ in manifest["reads"],
            "validation": single_and_averaged(view_probabilities(model, validation.images, 500, True), validation.labels),
            "unlabeled": single_and_averaged(view_probabilities(model, unlabeled.images, 500, True), audit_labels),
            "unlabeled_images": len(audit_labels)}


def cell(scores: dict[str, float]) -> str:
    gain = 100 * (scores["averaged"] - scores["single"])
    return f"{scores['single']:.2%} → {scores['averaged']:.2%} ({gain:+.2f} ± {100 * scores['gain_standard_error']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True, help="the split artifact the models were trained on")
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="finished artifacts with a model")
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args()
    validation, unlabeled = catalog.read_table(args.split, "validation"), catalog.read_table(args.split, "unlabeled")
    audit_labels = catalog.read_table(args.split, "unlabeled_audit").labels
    rows = [measure(model_dir, validation, unlabeled, audit_labels) for model_dir in args.models]
    summary = {"command": "python bench/flip_average.py " + " ".join(sys.argv[1:]), "split": str(args.split), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# Flip averaging: top-1 of the single view → of the mean with the mirror image", "",
             "Gains in points ± the standard error of the paired difference. The test set is not read.", "",
             "| model | trained on the unlabeled images | validation | unlabeled images (audit labels) |", "|---|---|---|---|",
             *(f"| {r['model']} | {'yes' if r['trained_on_unlabeled_images'] else 'no'} | {cell(r['validation'])} | "
               f"{cell(r['unlabeled'])} |" for r in rows),
             "", f"Command: `{summary['command']}`", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
