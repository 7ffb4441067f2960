"""Container overhead per stage, and the stage image's build time.

For each stage of the smoke pipeline, launched by the subprocess and by the docker launcher:
start-to-exit wall time minus the stage's own ``run`` time (which the stage CLI reports). With
``--build``, also times the stage image's build from a warm layer cache after a source change
(what a developer waits for) and, with ``--cold``, from no cache at all.

    python bench/containers.py --archive PATH [--repeats 3] [--build] [--cold]

Writes bench/results/containers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_pipeline_config  # noqa: E402
from pipelines.launchers import LAUNCHERS  # noqa: E402
from stages.lib import cifar  # noqa: E402
from stages.lib.machine import processor_name  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STAGE_IMAGE = "ssl-pipeline/stage:cpu"


def time_stages(launcher_name: str, archive: Path, scratch: Path) -> dict[str, dict[str, float]]:
    config = load_pipeline_config("smoke")
    launcher = LAUNCHERS[launcher_name]()
    split, model, evaluation = scratch / "split", scratch / "baseline", scratch / "evaluate"
    steps = [("split", config.split, {"data": archive}, split),
             ("baseline", config.baseline, {"split": split}, model),
             ("evaluate", config.evaluate, {"split": split, "model": model}, evaluation)]
    timings = {}
    for stage, stage_config, inputs, output in steps:
        launched = launcher.launch(stage, stage_config, inputs, output, config.resources)
        timings[stage] = {"wall_seconds": launched.wall_seconds, "stage_seconds": launched.stage_seconds,
                          "overhead_seconds": launched.overhead_seconds}
    return timings


def time_build(no_cache: bool) -> float:
    if not no_cache:  # a source change: the layers after the dependencies rebuild
        (ROOT / "stages" / "_bench_touch.py").write_text(f"# {time.time()}\n")
    try:
        started = time.perf_counter()
        subprocess.run([ROOT / "docker" / "build-local.sh", "stage"], check=True, cwd=ROOT,
                       env={**os.environ, "SSL_PIPELINE_BUILD_OPTIONS": "--no-cache" if no_cache else ""})
        return time.perf_counter() - started
    finally:
        (ROOT / "stages" / "_bench_touch.py").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--build", action="store_true", help="also time an image rebuild after a source change")
    parser.add_argument("--cold", action="store_true", help="also time a build with no layer cache")
    args = parser.parse_args()
    archive = cifar.verify_archive(args.archive)
    runs: dict[str, list] = {"subprocess": [], "docker": []}
    for _ in range(args.repeats):
        for launcher in runs:
            with tempfile.TemporaryDirectory(prefix="bench-containers-") as scratch:
                runs[launcher].append(time_stages(launcher, archive, Path(scratch)))
    summary = {
        launcher: {stage: {key: statistics.median(r[stage][key] for r in results) for key in results[0][stage]}
                   for stage in results[0]}
        for launcher, results in runs.items()
    }
    builds = {}
    if args.build:
        builds["rebuild_after_source_change_seconds"] = time_build(no_cache=False)
    if args.cold:
        builds["cold_build_seconds"] = time_build(no_cache=True)
    result = {"machine": f"{platform.node()} ({processor_name()})",
              "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
              "command": " ".join(["python", *sys.argv]), "median": summary, "runs": runs, "builds": builds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "containers.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "containers.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"# Container overhead per stage ({result['date']})", "",
             f"`{result['command']}`; smoke preset; medians of {result['repeats']} runs.",
             "Overhead = start-to-exit wall time minus the stage's own `run` time (reported by the stage CLI).",
             "", "| stage | subprocess wall | subprocess overhead | docker wall | docker overhead | docker - subprocess |",
             "|---|---|---|---|---|---|"]
    sub, dock = result["median"]["subprocess"], result["median"]["docker"]
    for stage in sub:
        lines.append(f"| {stage} | {sub[stage]['wall_seconds']:.2f} s | {sub[stage]['overhead_seconds']:.2f} s | "
                     f"{dock[stage]['wall_seconds']:.2f} s | {dock[stage]['overhead_seconds']:.2f} s | "
                     f"{dock[stage]['overhead_seconds'] - sub[stage]['overhead_seconds']:+.2f} s |")
    for name, seconds in result["builds"].items():
        lines.append(f"\n{name.replace('_', ' ')}: {seconds:.0f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
