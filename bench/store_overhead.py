"""What an object store adds to each stage, against a directory store: seconds and bytes moved.

Makes the artifacts of a smoke study (2 seeds x baseline and self-training, one stage at a time,
a directory store), then for each artifact times what the flow does around a stage in each kind of
store: in a directory, taking the output's lock (the stage writes in place); in S3 (moto's local
server), taking the lease and publishing the finished output (files, then the manifest), and on
another machine's mirror fetching it as a next stage's input (download and check). Writes
bench/results/<--name>.{json,md}.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/store_overhead.py [--name store-overhead]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import ROOT, S3_BUCKET, s3_server

from stages.lib.artifacts import read_manifest
from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"


def make_artifacts(home: Path) -> Path:
    env = {**os.environ, "SSL_PIPELINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    home.mkdir(parents=True)
    with (home / "study.log").open("w") as log:
        subprocess.run([str(ROOT / ".venv/bin/ssl-pipeline"), "study", "--preset", "smoke", "--seeds", "0", "1",
                        "--experiments", "baseline", "self_training", "--unlabeled", "all"],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return home / "artifacts"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(artifact: Path, url: str, homes: tuple[Path, Path]) -> dict:
    """One artifact's seconds in each store: directory lock; S3 lease + publish, and fetch elsewhere."""
    from pipelines.store import DirectoryStore, ObjectStore

    stage, name = artifact.parent.name, artifact.name
    directory = DirectoryStore(homes[0] / "directory-store")

    def lock() -> None:
        with directory.writing(stage, name):
            pass

    store = ObjectStore(url)
    os.environ["SSL_PIPELINE_HOME"] = str(homes[0])  # the machine that made it
    shutil.copytree(artifact, store.output(stage, name))

    def publish() -> None:
        with store.writing(stage, name) as output:
            assert output is None  # made: only uploaded

    published = timed(publish)
    os.environ["SSL_PIPELINE_HOME"] = str(homes[1])  # a machine whose next stage reads it
    fetched = timed(lambda: store.local(store.output(stage, name)))
    files = [path for path in artifact.rglob("*") if path.is_file()]
    return {"stage": stage, "files": len(files), "bytes": sum(path.stat().st_size for path in files),
            "directory_lock_seconds": round(timed(lock), 4), "s3_publish_seconds": round(published, 3),
            "s3_fetch_seconds": round(fetched, 3), "stage_seconds": read_manifest(artifact)["seconds"]}


def summary(rows: list[dict]) -> list[dict]:
    stages = sorted({row["stage"] for row in rows}, key=[row["stage"] for row in rows].index)
    table = []
    for stage in stages:
        of = [row for row in rows if row["stage"] == stage]
        table.append({"stage": stage, "artifacts": len(of), "files": of[0]["files"],
                      "megabytes": round(statistics.mean(row["bytes"] for row in of) / 1e6, 2),
                      **{key: round(statistics.median(row[key] for row in of), 4) for key in
                         ("stage_seconds", "directory_lock_seconds", "s3_publish_seconds", "s3_fetch_seconds")}})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="store-overhead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ssl-store-overhead-"))
    artifacts = sorted(path.parent for path in make_artifacts(work / "made").glob("*/*/manifest.json"))
    with s3_server(work) as env:
        os.environ.update(env)
        rows = [measure(artifact, f"s3://{S3_BUCKET}/overhead", (work / "writer", work / "reader")) for artifact in artifacts]
    machine = describe()
    report = {"machine": machine, "artifacts": rows, "by_stage": summary(rows),
              "command": "python bench/store_overhead.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"| {row['stage']} | {row['artifacts']} | {row['files']} | {row['megabytes']:.2f} | {row['stage_seconds']:.1f} | "
             f"{row['directory_lock_seconds'] * 1000:.1f} | {row['s3_publish_seconds']:.3f} | {row['s3_fetch_seconds']:.3f} |"
             for row in report["by_stage"]]
    total = {key: sum(row[key] for row in rows) for key in ("bytes", "s3_publish_seconds", "s3_fetch_seconds", "stage_seconds")}
    (RESULTS / f"{args.name}.md").write_text("\n".join([
        f"# Object store against directory store, per stage ({machine['processor']}, {machine['cpus']} CPUs)", "",
        "The artifacts of a smoke study (2 seeds x baseline and self-training). Directory: taking the output's lock, "
        "the one step a directory store adds (the stage writes in place). S3 (moto's server on this machine): taking the "
        "lease and uploading the finished output, files then manifest; and, in another home, fetching it as the next "
        "stage's input (download and SHA-256 check). Medians over a stage's artifacts.", "",
        "| stage | artifacts | files | MB | stage s | directory lock ms | S3 publish s | S3 fetch s |",
        "|---|---|---|---|---|---|---|---|", *lines, "",
        f"All {len(rows)} artifacts: {total['bytes'] / 1e6:.1f} MB, {total['s3_publish_seconds']:.1f} s publishing and "
        f"{total['s3_fetch_seconds']:.1f} s fetching, against {total['stage_seconds']:.1f} s of the stages' own time.", "",
        f"Command: `{report['command']}`", ""]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
