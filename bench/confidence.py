"""How many unlabeled images a trained model is confident about, and how often it is right there.

For each threshold: the fraction of the split's unlabeled images whose top probability reaches it
and the accuracy of those predictions against the audit labels (the rule the self-training stage
and FixMatch's mask share: ``stages.pseudo_label.select``). It tells where a confidence threshold
puts a warm-started consistency run: how much of the unlabeled loss is active, and how clean.
Writes ``bench/results/<--name>.{json,md}``.

    .venv/bin/python bench/confidence.py --split DIR --model DIR --name confidence-quick-seed1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.lib import catalog
from stages.lib.catalog import load_classifier
from stages.lib.pseudo_labels import audit_accuracy, predict, select

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True, help="a finished split artifact")
    parser.add_argument("--model", type=Path, required=True, help="a finished artifact with a model (baseline, self_train, ...)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--name", required=True, help="results file stem")
    args = parser.parse_args()
    predictions = predict(load_classifier(args.model), catalog.read_table(args.split, "unlabeled"), batch_size=500)
    audit = catalog.read_table(args.split, "unlabeled_audit")
    rows = [{"threshold": threshold, "passing": len(chosen) / len(predictions),
             "accuracy": audit_accuracy(chosen, audit) if len(chosen) else None}
            for threshold in args.thresholds for chosen in [select(predictions, threshold)]]
    overall = audit_accuracy(predictions, audit)
    summary = {"command": "python bench/confidence.py " + " ".join(sys.argv[1:]), "split": str(args.split),
               "model": str(args.model), "images": len(predictions), "accuracy": overall,
               "mean_confidence": float(predictions["confidence"].mean()), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Confidence of `{args.model.name}` on {len(predictions):,} unlabeled images", "",
             f"Accuracy on all of them {overall:.1%}; mean top probability {summary['mean_confidence']:.3f}.", "",
             "| threshold | images passing | their accuracy |", "|---|---|---|",
             *(f"| {r['threshold']} | {r['passing']:.1%} | {'—' if r['accuracy'] is None else format(r['accuracy'], '.1%')} |"
               for r in rows),
             "", f"Command: `{summary['command']}`", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
