"""A training stage interrupted after an epoch resumes from its checkpoint and ends exactly where
an uninterrupted run ends; the output lock and the left-overs of killed writers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
import time
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest

from stages.fine_tune import EncoderFineTuneConfig, JointConfig
from stages.lib import training
from stages.lib.artifacts import exclusive_output, read_manifest, staged_output
from stages.lib.stage import get_stage
from stages.lib.training import EpochCheckpoint, EpochRecorder

TIMINGS = ["epoch_seconds", "timestamp_ms"]


class Interrupted(Exception):
    """Stands in for a kill: raised right after a checkpoint was saved."""


def interrupt_after(monkeypatch, epochs: int) -> None:
    save = EpochCheckpoint.on_epoch_end

    def save_then_stop(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch + 1 == epochs:
            raise Interrupted
    monkeypatch.setattr(EpochCheckpoint, "on_epoch_end", save_then_stop)


def three_epochs(smoke, stage: str):
    if stage == "baseline":
        return smoke.baseline.model_copy(update={"epochs": 3})
    if stage == "consistency":
        return smoke.consistency.model_copy(update={"classifier": smoke.consistency.classifier.model_copy(update={"epochs": 3})})
    if stage == "fine_tune":  # joint: two streams through one encoder, BatchNorm re-estimated before each validation
        return EncoderFineTuneConfig(mode="joint", classifier=smoke.baseline.model_copy(update={"epochs": 3}),
                                     joint=JointConfig(unlabeled_batch_size=32))
    return smoke.pretrain.model_copy(update={"epochs": 3, "objective": "simclr"})


def inputs_of(stage: str, split_artifact, smoke, tmp_path) -> dict:
    if stage != "fine_tune":
        return {"split": split_artifact}
    encoder = tmp_path / "encoder"
    get_stage("pretrain").execute(smoke.pretrain.model_copy(update={"epochs": 1, "objective": "simclr"}),
                                  {"split": split_artifact}, encoder)
    return {"split": split_artifact, "encoder": encoder}


def weights(path) -> list[np.ndarray]:
    return keras.saving.load_model(path).get_weights()


@pytest.mark.parametrize("stage, model_file", [("baseline", "model.keras"), ("consistency", "model.keras"),
                                               ("pretrain", "encoder.keras"), ("fine_tune", "model.keras")])
def test_an_interrupted_stage_resumes_and_matches_an_uninterrupted_one(stage, model_file, split_artifact, smoke, tmp_path,
                                                                       monkeypatch, caplog):
    config, inputs = three_epochs(smoke, stage), inputs_of(stage, split_artifact, smoke, tmp_path)
    get_stage(stage).execute(config, inputs, tmp_path / "clean")

    output = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(Interrupted):
            get_stage(stage).execute(config, inputs, output)
    assert not output.exists() and (tmp_path / ".resumed.work" / "fit-1" / "latest").read_text() == "epoch-2"
    with caplog.at_level(logging.INFO, logger="stages.lib.training"):
        get_stage(stage).execute(config, inputs, output)
    assert "resuming from the checkpoint of epoch 2" in caplog.text
    assert not (tmp_path / ".resumed.work").exists()

    # Equal up to float32 rounding: TensorFlow's CPU kernels may sum in a thread-dependent order (CI
    # once saw one weight of 16 differ by 5e-10); a resume that loses state (optimizer step, RNG,
    # history) moves the weights by orders of magnitude more.
    for clean, resumed in zip(weights(tmp_path / "clean" / model_file), weights(output / model_file)):
        np.testing.assert_allclose(resumed, clean, rtol=1e-5, atol=1e-7)
    history = [pd.read_parquet(path / "history.parquet") for path in (tmp_path / "clean", output)]
    pd.testing.assert_frame_equal(*(frame.drop(columns=TIMINGS) for frame in history))
    assert len(history[1]) == 3
    # the training time counts the epochs before the interruption too
    epoch_seconds = history[1]["epoch_seconds"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train_seconds"] == pytest.approx(epoch_seconds.sum(), abs=0.01) and epoch_seconds.iloc[:2].sum() > 0
    # and so does the stage's own time, which the study report sums
    manifest = read_manifest(output)
    assert manifest["seconds_before_resume"] >= epoch_seconds.iloc[:2].sum()
    wall = dt.datetime.fromisoformat(manifest["finished_at"]) - dt.datetime.fromisoformat(manifest["started_at"])
    assert manifest["seconds"] == pytest.approx(wall.total_seconds() + manifest["seconds_before_resume"], abs=0.01)
    assert "seconds_before_resume" not in read_manifest(tmp_path / "clean")


def test_a_stopped_fit_stays_stopped_when_resumed(split_artifact, smoke, tmp_path, monkeypatch):
    """Interrupted right after early stopping ended it, a fit must not train on when rerun."""
    config = smoke.baseline.model_copy(update={"epochs": 6, "early_stopping_patience": 1, "learning_rate": 1e-9})
    get_stage("baseline").execute(config, {"split": split_artifact}, tmp_path / "clean")
    stopped_after = len(pd.read_parquet(tmp_path / "clean" / "history.parquet"))
    assert stopped_after < 6  # early stopping did end it
    with monkeypatch.context() as patch:
        interrupt_after(patch, stopped_after)
        with pytest.raises(Interrupted):
            get_stage("baseline").execute(config, {"split": split_artifact}, tmp_path / "out")
    get_stage("baseline").execute(config, {"split": split_artifact}, tmp_path / "out")
    assert len(pd.read_parquet(tmp_path / "out" / "history.parquet")) == stopped_after


@pytest.mark.parametrize("budget_seconds, eta", [
    (None, "ETA 1m10s"),  # 7 epochs left at this fit's 10 s each, not 10 s / 3
    (250, "ETA 0m40s"),  # a budget ends first: 250 - (100 + 100 + 10) s left
])
def test_a_resumed_fit_estimates_its_eta_from_the_epochs_it_ran_and_the_budget_left(budget_seconds, eta, monkeypatch,
                                                                                     caplog):
    clock = iter([0.0, 0.0, 10.0])  # the fit begins, resumed at epoch 3, which ends 10 s later
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: next(clock), time=time.time))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    recorder = EpochRecorder(epochs=10, budget_seconds=budget_seconds)
    recorder.rows = [{"epoch": 1, "epoch_seconds": 100.0}, {"epoch": 2, "epoch_seconds": 100.0}]  # as restored
    recorder.set_model(model)
    with caplog.at_level(logging.INFO, logger="stages.lib.training"):
        recorder.on_train_begin()
        recorder.on_epoch_begin(2)
        recorder.on_epoch_end(2, {"loss": 1.0})
    assert f"epoch 3/10  loss 1 | 10.0 s/epoch, {eta}" in caplog.text


def test_one_writer_per_output_and_killed_writers_leave_nothing_behind(tmp_path):
    output = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from stages.lib.artifacts import exclusive_output\n"
        f"with exclusive_output(Path({str(output)!r})):\n    print('locked', flush=True); time.sleep(3)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with exclusive_output(output):  # waits for the other process
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 1.5

    stale = tmp_path / ".out.tmp-deadbeef"  # what a killed staged_output leaves
    stale.mkdir()
    (stale / "half.parquet").write_bytes(b"half")
    with exclusive_output(output) as work:
        assert not stale.exists()
        with staged_output(output) as temporary:
            (temporary / "done.txt").write_text("done")
        assert work.name == ".out.work"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]
