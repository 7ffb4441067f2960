"""Where a consistency training step spends its time: the whole step and the step without the strong
view, each as ``fit`` runs it (jitted where the backend compiles), at a preset's batch shapes on random images.

    KERAS_BACKEND=jax .venv/bin/python bench/gpu/step_time.py [--preset ssl-gpu] [--set KEY=VALUE] [--steps 50]
        [--labeled-batches 64 128 256] [--no-ablation] [--out DIR] [--name STEM]

Run it first on a new accelerator (a minute or two): a slow component shows up before a long run, and
``--labeled-batches`` shows which batch fills the card.
Writes ``consistency-step-time.{json,md}`` into ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.config import load_pipeline_config, parse_assignment  # noqa: E402
from stages.consistency import (
    ConsistencyConfig,  # noqa: E402
    ConsistencyModel,  # noqa: E402
)
from stages.lib.catalog import DatasetInfo  # noqa: E402
from stages.lib.machine import describe  # noqa: E402
from stages.lib.training import (  # noqa: E402
    build_classifier,  # noqa: E402
    build_optimizer,
    one_hot,
)

CIFAR100_SHAPE = DatasetInfo([str(label) for label in range(100)], (32, 32, 3), "crop")  # classes and images as CIFAR-100's


class SameBatch(keras.utils.PyDataset):
    """One batch, ``steps`` times an epoch: the input pipeline costs nothing."""

    def __init__(self, batch, steps: int):
        super().__init__()
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.batch


class FirstStepEnd(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.seconds = time.perf_counter()


def train_step_time(config: ConsistencyConfig, labeled, unlabeled, labels, steps: int) -> dict[str, float]:
    """Seconds to the end of the first step (compilation included) and milliseconds per later step,
    in one ``fit`` of ``steps + 1`` steps. Not ``train_on_batch``, whose per-call state sync took 73 ms
    of a 21 ms step on an H200; not two fits, since Keras' JAX trainer cannot fit an EMA optimizer's
    model twice (its end puts the same buffer in a weight and its average)."""
    keras.utils.set_random_seed(0)
    model = ConsistencyModel(build_classifier(config.classifier, CIFAR100_SHAPE), config)
    model.build((labeled.shape, unlabeled.shape))
    model.compile(optimizer=build_optimizer(config.classifier, config.classifier.learning_rate, use_ema=True))
    first_step, started = FirstStepEnd(), time.perf_counter()
    model.fit(SameBatch(((labeled, unlabeled), labels), steps + 1), epochs=1, verbose=0, callbacks=[first_step])
    keras.ops.convert_to_numpy(model.trainable_variables[0])  # waits for the device
    ended = time.perf_counter()
    return {"first_seconds": round(first_step.seconds - started, 2),
            "ms_per_step": round((ended - first_step.seconds) / steps * 1000, 1), "jit_compile": bool(model.jit_compile)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ssl-gpu")
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="config override KEY.PATH=VALUE")
    parser.add_argument("--labeled-batches", type=int, nargs="+", help="labeled batch sizes to time (default: the preset's); "
                        "the unlabeled batch is unlabeled_ratio times each")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the step without the strong view")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", help="results file stem (default: consistency-step-time, then each --set's value)")
    args = parser.parse_args()
    config = load_pipeline_config(args.preset, [parse_assignment(text) for text in args.assignments]).consistency
    rows = [row for batch in args.labeled_batches or [config.classifier.batch_size]
            for row in batch_rows(config, batch, args.steps, args.ablation)]
    result = {"preset": args.preset, "overrides": args.assignments, "precision": config.classifier.precision,
              "backend": keras.backend.backend(), "device": device(), "machine": describe(),
              "steps": args.steps, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or "consistency-step-time" + "".join(f"-{text.rpartition('=')[2]}" for text in args.assignments)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(f"| {row['step']} | {row['labeled_batch']} + {row['unlabeled_batch']} | {row['jit_compile']} | "
                      f"{row['first_seconds']} | {row['ms_per_step']} | {row['images_per_second']:,} |" for row in rows)
    command = f"KERAS_BACKEND={result['backend']} python bench/gpu/step_time.py {shlex.join(sys.argv[1:])}"
    (args.out / f"{name}.md").write_text(
        f"# Consistency step time: {args.preset} preset {' '.join(args.assignments)}, {result['precision']}, "
        f"{result['backend']} on {result['device']}\n\nRandom pixels. Command: `{command}`\n\n"
        "| step | batch (labeled + unlabeled) | jitted | first step, s (compilation included) | ms per later step "
        f"| images per second |\n|---|---|---|---|---|---|\n{table}\n")
    print(json.dumps(result))


def batch_rows(config: ConsistencyConfig, batch: int, steps: int, ablation: bool) -> list[dict]:
    """The step's time at ``batch`` labeled images (and, with ``ablation``, without the strong view)."""
    config = config.model_copy(update={"classifier": config.classifier.model_copy(update={"batch_size": batch})})
    rng = np.random.default_rng(0)
    labeled = rng.integers(0, 256, (batch, 32, 32, 3), dtype="uint8")  # as TwoStreamBatches feeds them
    unlabeled = rng.integers(0, 256, (batch * config.unlabeled_ratio, 32, 32, 3), dtype="uint8")
    labels = one_hot(rng.integers(0, 100, batch), 100)
    no_strong = config.model_copy(update={"strong": config.strong.model_copy(update={"num_ops": 0, "cutout": 0.0})})
    variants = {"train_step": config, **({"train_step_without_strong_view": no_strong} if ablation else {})}
    rows, images = [], batch + len(unlabeled)
    for step, variant in variants.items():
        timing = train_step_time(variant, labeled, unlabeled, labels, steps)
        rows.append({"step": step, "labeled_batch": batch, "unlabeled_batch": len(unlabeled), **timing,
                     "images_per_second": round(images / timing["ms_per_step"] * 1000)})
    return rows


def device() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].device_kind
    return "cpu"


if __name__ == "__main__":
    main()
