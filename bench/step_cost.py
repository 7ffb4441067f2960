"""Where the quick network's training step goes: images/s of the full step against the same step
without augmentation, without dropout, and at other batch sizes, in float32 and (where the CPU
has it) bfloat16. Each measurement is a fresh process of ``bench/throughput.py``'s worker.
Writes bench/results/<--name>.{json,md}.

    .venv/bin/python bench/step_cost.py [--name step-cost-quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from stages.lib.machine import describe, has_bfloat16

RESULTS = Path(__file__).parent / "results"
THROUGHPUT = Path(__file__).parent / "throughput.py"
NO_AUGMENTATION = {"augment": {"flip": False, "rotation": 0, "zoom": 0, "translation": 0, "blur_sigma": 0}}
NO_DROPOUT = {"architecture": {"block_dropout": [0, 0, 0], "head_dropout": 0}}
VARIANTS = {  # name: (baseline overrides, batch size)
    "the quick step": ({}, 128),
    "no augmentation": (NO_AUGMENTATION, 128),
    "no dropout": (NO_DROPOUT, 128),
    "no augmentation, no dropout": ({**NO_AUGMENTATION, **NO_DROPOUT}, 128),
    "batch 256": ({}, 256),
    "batch 512": ({}, 512),
}


def measure(precision: str, overrides: dict, batch_size: int, images: int) -> dict:
    output = subprocess.run([sys.executable, str(THROUGHPUT), "--worker", "quick", precision, "--baseline", json.dumps(overrides),
                             "--batch-size", str(batch_size), "--images", str(images)],
                            capture_output=True, text=True, check=True)
    return json.loads(output.stdout.split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5120, help="images in the timed epoch")
    parser.add_argument("--name", default="step-cost-quick")
    args = parser.parse_args()
    precisions = ["float32", *(["mixed_bfloat16"] if has_bfloat16() else [])]
    rows = []
    for precision in precisions:
        for variant, (overrides, batch_size) in VARIANTS.items():
            result = measure(precision, overrides, batch_size, args.images)
            rows.append({"variant": variant, "precision": precision, "batch_size": batch_size,
                         "train_images_per_second": result["train_images_per_second"]})
            print(json.dumps(rows[-1]), flush=True)
    full = {row["precision"]: row["train_images_per_second"] for row in rows if row["variant"] == "the quick step"}
    machine = describe()
    report = {"machine": machine, "rows": rows, "command": "python bench/step_cost.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"| {row['variant']} | {row['precision']} | {row['train_images_per_second']} | "
             f"{row['train_images_per_second'] / full[row['precision']]:.2f} |" for row in rows]
    (RESULTS / f"{args.name}.md").write_text("\n".join([
        f"# The quick network's training step, part by part ({machine['processor']}, {machine['cpus']} CPUs)", "",
        "Images per second of one timed epoch of random images, each in a fresh process; the last column is "
        "the rate against the full step's in the same precision (above 1: what leaving the part out saves).", "",
        "| step | precision | train images/s | vs the quick step |", "|---|---|---|---|", *lines, "",
        f"Command: `{report['command']}`", ""]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
