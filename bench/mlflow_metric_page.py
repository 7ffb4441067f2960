"""Screenshot of MLflow's own metric page for the self_train runs of one sweep.

Starts ``mlflow server`` on the home's store, opens the page that plots one metric of several runs
by step (here: iteration) in headless Chromium, and saves it, so the README shows what a user sees
when comparing thresholds in the MLflow UI.

    .venv/bin/python bench/mlflow_metric_page.py --home HOME --sweep NAME --out docs/self-training-val-accuracy.png
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from pipelines import settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_train_runs(sweep: str) -> tuple[str, list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_name())
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`ssl.sweep` = '{sweep}' and tags.`ssl.stage` = 'self_train'",
                              order_by=["params.`selection.threshold` ASC"])
    return experiment.experiment_id, [run.info.run_id for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--sweep", required=True, help="the sweep's ssl.sweep tag")
    parser.add_argument("--metric", default="val_accuracy")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ[settings.HOME_ENV] = str(args.home.resolve())
    experiment_id, run_ids = self_train_runs(args.sweep)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", settings.tracking_uri(),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        # the query MLflow's own "plot chart" links build (Routes.getMetricPageRoute of MLflow 3.17's UI)
        query = urllib.parse.urlencode({
            "runs": json.dumps(run_ids), "metric": json.dumps(args.metric), "experiments": json.dumps([experiment_id]),
            "plot_metric_keys": json.dumps([args.metric]), "plot_layout": "{}", "x_axis": "step",
            "y_axis_scale": "linear", "line_smoothness": 1, "show_point": "true", "deselected_curves": "[]",
            "last_linear_y_axis_range": "[]"})
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/#/metric?{query}")
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.get_by_label("Close").first.click()  # the assistant panel
            page.wait_for_timeout(2000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"{args.out}: {args.metric} of {len(run_ids)} self_train runs")


if __name__ == "__main__":
    main()
