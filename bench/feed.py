"""Training rate of the quick preset's stages fed through tf.data against the PyDataset's Python generator.

The same fit either way (tests/test_feed.py: the same batches, the same weights); only the feed differs.
Each measurement runs in a fresh subprocess on synthetic uint8 images (9,000 labeled as in the split,
40,000 unlabeled): the baseline's fit (`EpochBatches`) and FixMatch's (`TwoStreamBatches`). The rate
leaves out the first epoch, which traces the graph. Writes bench/results/<--name>.{json,md}.

    .venv/bin/python bench/feed.py [--epochs 3] [--name feed]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from stages.lib.catalog import DatasetInfo
from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"
FEEDS = ("pydataset", "tf.data")
STAGES = ("baseline", "consistency")

CIFAR100_SHAPE = DatasetInfo([str(label) for label in range(100)], (32, 32, 3), "crop")  # classes and images as CIFAR-100's


def measure(stage: str, through: str, epochs: int) -> dict:
    import numpy as np

    from pipelines.config import load_pipeline_config
    from stages import consistency
    from stages.lib import training
    from stages.lib.catalog import ImageTable

    if through == "pydataset":
        training.feed = consistency.feed = lambda batches: batches
    rng = np.random.default_rng(0)

    def table(size: int) -> ImageTable:
        return ImageTable(np.arange(size).astype(str), rng.integers(0, 256, (size, 32, 32, 3)).astype("uint8"),
                          rng.integers(0, 100, size).astype("int32"))

    labeled, validation = table(9000), table(1000)
    config = load_pipeline_config("quick")
    if stage == "baseline":
        schedule = config.baseline.model_copy(update={"epochs": epochs, "warmup_epochs": 1})
        history = training.train_classifier(schedule, CIFAR100_SHAPE, labeled, validation).history
        images_per_epoch = len(labeled)
    else:
        settings = config.consistency.model_copy(update={
            "steps_per_epoch": 40,
            "classifier": config.consistency.classifier.model_copy(update={"epochs": epochs, "time_budget_minutes": None})})
        history = consistency.train(settings, CIFAR100_SHAPE, labeled, validation, table(40000).images)[1]
        images_per_epoch = settings.steps_per_epoch * settings.classifier.batch_size * (1 + settings.unlabeled_ratio)
    seconds = float(history["epoch_seconds"].iloc[1:].sum())
    return {"stage": stage, "feed": through, "epochs_timed": len(history) - 1, "seconds": round(seconds, 1),
            "images_per_second": round(images_per_epoch * (len(history) - 1) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit; the first is not timed")
    parser.add_argument("--name", default="feed", help="results file stem")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure(*args.worker, args.epochs)))
        return

    def child(stage: str, through: str) -> dict:
        output = subprocess.run([sys.executable, __file__, "--worker", stage, through, "--epochs", str(args.epochs)],
                                capture_output=True, text=True, check=True)
        return json.loads(output.stdout.split("RESULT ", 1)[1])

    rows = [child(stage, through) for stage in STAGES for through in FEEDS]
    report = {"command": "python bench/feed.py " + " ".join(sys.argv[1:]),
              "machine": describe(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    rate = {(row["stage"], row["feed"]): row["images_per_second"] for row in rows}
    lines = [f"| {stage} | {rate[stage, 'pydataset']} | {rate[stage, 'tf.data']} | "
             f"{rate[stage, 'tf.data'] / rate[stage, 'pydataset']:.2f}x |" for stage in STAGES]
    (RESULTS / f"{args.name}.md").write_text("\n".join([
        f"# Training images/s of the quick preset by feed ({report['machine']['cpus']} CPUs: "
        f"{', '.join(report['machine']['vector']) or 'no AVX'}, TensorFlow backend)", "",
        "Consistency counts labeled and unlabeled images (64 + 192 a step). Same batches and weights either way "
        "(tests/test_feed.py).", "",
        "| stage | PyDataset (Python generator) | tf.data | speed-up |", "|---|---|---|---|", *lines, "",
        f"Command: `{report['command']}`", ""]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
