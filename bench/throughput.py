"""Training throughput of the seed and quick networks against this machine's GEMM rate in the same precision.

Each measurement runs in a fresh subprocess (one model per process: a second model built in the
same process trains measurably slower). bfloat16 is measured where the CPU has it (AMX or
AVX512_BF16). Writes bench/results/<--name>.{json,md} (default throughput).

    .venv/bin/python bench/throughput.py [--images 2560] [--batch-size 128] [--name throughput]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from stages.lib.catalog import DatasetInfo
from stages.lib.machine import describe, has_bfloat16

RESULTS = Path(__file__).parent / "results"

CIFAR100_SHAPE = DatasetInfo([str(label) for label in range(100)], (32, 32, 3), "crop")  # classes and images as CIFAR-100's


def gemm_gflops(precision: str, size: int = 2048, repeats: int = 20) -> float:
    """Matrix-multiply rate through the Keras backend in ``precision``'s compute dtype, GFLOP/s (2 n^3
    flops per product)."""
    import keras
    import numpy as np

    dtype = keras.DTypePolicy(precision).compute_dtype
    a = keras.ops.convert_to_tensor(np.random.rand(size, size).astype("float32"), dtype=dtype)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        result = keras.ops.matmul(a, a)
    keras.ops.convert_to_numpy(result)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the conv and dense layers for one image (the rest is negligible)."""
    import keras

    flops = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            height, width, out_channels = layer.output.shape[1:]
            flops += 2 * height * width * out_channels * layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return flops


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def measure_network(preset: str, precision: str, images: int, batch_size: int, baseline: dict | None = None) -> dict:
    """The preset's baseline network (``baseline``: overrides of its section) trained for one timed epoch."""
    import numpy as np

    from pipelines.config import load_pipeline_config
    from stages.lib.training import build_classifier, compile_classifier, one_hot

    config = load_pipeline_config(preset, [{"baseline": {**(baseline or {}), "batch_size": batch_size, "precision": precision}}]).baseline
    model = build_classifier(config, CIFAR100_SHAPE)
    compile_classifier(model, config, steps_per_epoch=images // batch_size)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3)).astype("float32")
    y = one_hot(rng.integers(0, 100, images), 100)
    model.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, epochs=1, verbose=0)  # build graph
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    rate = images / (time.perf_counter() - started)
    flops = forward_flops(model)
    return {
        "preset": preset,
        "filters": list(config.architecture.filters),
        "precision": config.precision,
        "parameters": model.count_params(),
        "forward_gflop_per_image": flops / 1e9,
        "train_images_per_second": round(rate, 1),
        # training ~ 3x the forward pass (forward, gradient w.r.t. activations and w.r.t. weights)
        "achieved_train_gflops": round(3 * flops * rate / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2560, help="images in the timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--presets", nargs="+", default=["quick", "seed"])
    parser.add_argument("--name", default="throughput", help="results file stem (one per machine kind)")
    parser.add_argument("--worker", nargs=2, metavar=("WHAT", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default="{}", help=argparse.SUPPRESS)  # the worker's overrides, JSON
    args = parser.parse_args()
    if args.worker:  # one measurement, printed as JSON for the parent process
        what, precision = args.worker
        result = (gemm_gflops(precision) if what == "gemm"
                  else measure_network(what, precision, args.images, args.batch_size, json.loads(args.baseline)))
        print("RESULT " + json.dumps(result))
        return
    import keras

    def child(what: str, precision: str):
        output = subprocess.run([sys.executable, __file__, "--worker", what, precision, "--images", str(args.images),
                                 "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        return json.loads(output.stdout.split("RESULT ", 1)[1])

    precisions = ["float32", *(["mixed_bfloat16"] if has_bfloat16() else [])]
    gemm = {precision: round(child("gemm", precision), 1) for precision in precisions}
    networks = [child(preset, precision) for precision in precisions for preset in args.presets]
    for network in networks:
        network["fraction_of_gemm_rate"] = round(network["achieved_train_gflops"] / gemm[network["precision"]], 3)
    report = {
        "command": "python bench/throughput.py " + " ".join(sys.argv[1:]),
        "machine": {**describe(), "keras": keras.__version__, "backend": keras.backend.backend()},
        "batch_size": args.batch_size,
        "gemm_gflops": gemm,
        "networks": networks,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [f"| {n['preset']} | {n['precision']} | {'/'.join(map(str, n['filters']))} | {n['parameters']:,} | "
            f"{n['forward_gflop_per_image']:.3f} | {n['train_images_per_second']} | {n['achieved_train_gflops']} | "
            f"{n['fraction_of_gemm_rate']:.0%} |" for n in networks]
    gemm_text = ", ".join(f"{precision} **{rate} GFLOP/s**" for precision, rate in gemm.items())
    (RESULTS / f"{args.name}.md").write_text("\n".join([
        f"# Training throughput, batch {args.batch_size} ({report['machine']['processor']}, {report['machine']['cpus']} CPUs: "
        f"{', '.join(report['machine']['vector']) or 'no AVX'})", "",
        f"Measured GEMM rate (2048x2048, Keras {keras.__version__} / {keras.backend.backend()}): {gemm_text}. "
        "Each network's rate is a fraction of the GEMM rate in its own precision.", "",
        "| preset | precision | filters | parameters | forward GFLOP/image | train images/s | train GFLOP/s | of GEMM rate |",
        "|---|---|---|---|---|---|---|---|", *rows, "", f"Command: `{report['command']}`", ""]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
