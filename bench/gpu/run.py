"""GPU benchmark: the ``ssl-gpu`` preset (FixMatch, WRN-28-2) for a stated wall-clock budget, then
the test set. Self-contained for a machine with JAX but no TensorFlow or Keras that reaches no
package registry: ``bench/gpu/pack.py`` prepares the wheels and the CIFAR-100 archive in parts.
There, from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/call1/wheels/*.whl
    PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax python3 bench/gpu/run.py --minutes 7 --out $OUT

Writes ``gpu-<preset>.json`` and ``.md`` (test accuracy, images/second, minutes, device) and the
learning curves into ``--out``. Locally, on the CPU: ``--preset smoke --minutes 0.2 --parts $CIFAR100_ARCHIVE``.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipelines.config import load_pipeline_config, parse_assignment  # noqa: E402
from stages import consistency, evaluate, split  # noqa: E402  (after the path, as a script)

ARCHIVE_NAME = "cifar-100-python.tar.gz"


def join_parts(pattern: str, directory: Path) -> Path:
    """The archive from its parts (in part order); its checksum is the split stage's to check."""
    parts = sorted(glob.glob(pattern), key=lambda path: int(path.rpartition("part")[2] or 0) if "part" in path else 0)
    if not parts:
        raise SystemExit(f"no archive parts match {pattern!r}: run bench/gpu/pack.py and send .gpu/call1..3")
    archive = directory / ARCHIVE_NAME
    with archive.open("wb") as joined:
        for part in parts:
            joined.write(Path(part).read_bytes())
    return archive


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.platform}: {device.device_kind}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ssl-gpu")
    parser.add_argument("--minutes", type=float, required=True, help="training budget, compilation included")
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="config override KEY.PATH=VALUE")
    parser.add_argument("--parts", default=str(ROOT / ".gpu" / "*" / f"{ARCHIVE_NAME}.part*"),
                        help="glob of the archive's parts (or the archive itself)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssl-gpu-bench"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    overrides = [parse_assignment(text) for text in args.assignments]
    config = load_pipeline_config(args.preset, [*overrides, {"consistency": {"classifier": {"time_budget_minutes": args.minutes}}}])
    started = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    archive = join_parts(args.parts, args.work)
    split.STAGE.execute(config.split, {"data": archive}, args.work / "split")
    data_seconds = time.perf_counter() - started
    consistency.STAGE.execute(config.consistency, {"split": args.work / "split"}, args.work / "model")
    evaluate.STAGE.execute(config.evaluate, {"split": args.work / "split", "model": args.work / "model"}, args.work / "evaluate")
    report(args, config, device_name(), data_seconds, time.perf_counter() - started)


def report(args, config, device: str, data_seconds: float, total_seconds: float) -> None:
    trained = json.loads((args.work / "model" / "metrics.json").read_text())
    tested = json.loads((args.work / "evaluate" / "metrics.json").read_text())
    result = {
        "preset": args.preset, "device": device, "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "python": platform.python_version(), "budget_minutes": args.minutes,
        "method": config.consistency.method, "architecture": config.consistency.classifier.architecture.name,
        **{key: tested[key] for key in ("test_accuracy", "test_accuracy_single_view", "test_top5_accuracy", "test_images")},
        **{key: trained[key] for key in ("best_val_accuracy", "best_epoch", "epochs_run", "steps", "steps_per_second",
                                         "images_per_second", "train_seconds", "parameters")},
        "data_seconds": round(data_seconds, 1), "total_seconds": round(total_seconds, 1),
        "overrides": args.assignments,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"gpu-{args.preset}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(args.work / "evaluate" / "figures" / "learning_curves.png", args.out / f"{name}-learning-curves.png")
    shutil.copy(args.work / "model" / "history.parquet", args.out / f"{name}-history.parquet")
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items())
    (args.out / f"{name}.md").write_text(f"# {args.preset} on {device}\n\n| | |\n|---|---|\n{rows}\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
