"""Pack what ``bench/gpu/run.py`` needs on a GPU machine with JAX but no TensorFlow, no Keras and no
package registry, where one transfer carries at most 64 MiB: the wheels of Keras and pydantic (the
versions installed here, built for that machine's Python) and the official CIFAR-100 archive in parts.

    .venv/bin/python bench/gpu/pack.py [--archive PATH] [--python-version 3.12]

writes ``.gpu/call1/`` (wheels + part 0), ``.gpu/call2/`` (part 1), ``.gpu/call3/`` (part 2): send one
folder per transfer, in order; ``run.py`` joins the parts and the split stage checks the SHA-256 of
the result before it unpickles anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what the stages need beyond that machine's packages (numpy, pyarrow, pandas, matplotlib, pyyaml, h5py, rich...)
WHEELS = ("keras", "namex", "optree", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "typing-extensions")
PARTS = 3  # 161 MiB + 5.5 MiB of wheels in thirds: with the repository (4.7 MiB) each call stays under 64 MiB
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download_wheels(directory: Path, python_version: str) -> None:
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(directory),
                    *pins], check=True)


def split_archive(archive: Path, destination: Path, first_call_bytes: int = 0) -> list[Path]:
    """The archive in ``PARTS`` parts, one per call's folder, cut so that every call carries the same
    bytes when the first one also carries ``first_call_bytes`` (the wheels): in equal thirds, the
    first call came to 63.9 MiB with the repository, against the 64 MiB a transfer allows."""
    size = archive.stat().st_size
    per_call = -(-(size + first_call_bytes) // PARTS)
    if first_call_bytes >= per_call:
        raise SystemExit(f"{first_call_bytes} bytes of wheels leave no room for the archive in the first call")
    sizes = [per_call - first_call_bytes] + [per_call] * (PARTS - 1)
    parts = []
    with archive.open("rb") as source:
        for index, part_bytes in enumerate(sizes):
            part = destination / f"call{index + 1}" / f"{archive.name}.part{index}"
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(source.read(part_bytes))
            parts.append(part)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=os.environ.get("CIFAR100_ARCHIVE"),
                        help="the official cifar-100-python.tar.gz (default: $CIFAR100_ARCHIVE)")
    parser.add_argument("--destination", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args()
    if args.archive is None:
        parser.error("pass --archive or set CIFAR100_ARCHIVE")
    wheels = args.destination / "call1" / "wheels"
    download_wheels(wheels, args.python_version)
    for part in split_archive(args.archive, args.destination, sum(path.stat().st_size for path in wheels.iterdir())):
        size = sum(path.stat().st_size for path in part.parent.rglob("*") if path.is_file())
        print(f"{part.parent.relative_to(ROOT)}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
