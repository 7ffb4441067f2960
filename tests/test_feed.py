"""The tf.data feed gives fit the PyDataset's own batches, epoch by epoch, and so the same training."""

import keras
import numpy as np
import pytest
from conftest import CIFAR_SHAPED

from pipelines.config import load_pipeline_config
from stages.lib import training
from stages.lib.catalog import ImageTable
from stages.lib.training import EpochBatches, TwoStreamBatches, feed

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="other backends iterate the PyDataset")

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (300, 32, 32, 3)).astype("uint8")
LABELS = RNG.integers(0, 100, 300).astype("int32")


def table(rows: slice) -> ImageTable:
    return ImageTable(np.arange(300)[rows].astype(str), IMAGES[rows], LABELS[rows])


@pytest.mark.parametrize("batches", [
    EpochBatches((IMAGES, LABELS.astype("float32"), RNG.random(300).astype("float32")), 128, seed=5),  # last batch 44
    TwoStreamBatches(table(slice(None)), 100, IMAGES[:50], 64, 96, seed=7, steps=7),  # 7 x 64 rows: two passes
], ids=["epoch", "two_stream"])
def test_the_feed_holds_the_pydatasets_batches_in_every_epoch(batches):
    dataset = feed(batches)
    for epoch in (0, 1, 0, 3):  # set by EpochSeeds before each epoch, and again on a resumed fit
        batches.set_epoch(epoch)
        fed = list(dataset.as_numpy_iterator())
        assert len(fed) == len(batches)
        for step, batch in enumerate(fed):
            for got, want in zip(keras.tree.flatten(batch), keras.tree.flatten(batches[step]), strict=True):
                assert got.dtype == want.dtype and np.array_equal(got, want)


def test_a_fit_from_the_feed_equals_one_from_the_pydataset(monkeypatch):
    config = load_pipeline_config("smoke").baseline.model_copy(update={"epochs": 2, "warmup_epochs": 1})
    weights = []
    for through in (feed, lambda batches: batches):
        monkeypatch.setattr(training, "feed", through)
        weights.append(training.train_classifier(config, CIFAR_SHAPED, table(slice(0, 250)), table(slice(250, None))).model.get_weights())
    for fed, iterated in zip(*weights, strict=True):  # up to float32 rounding, as in test_resume
        np.testing.assert_allclose(fed, iterated, rtol=1e-5, atol=1e-7)
