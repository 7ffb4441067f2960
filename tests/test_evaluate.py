import json

import keras
import numpy as np
import pandas as pd
import pytest

from stages import evaluate
from stages.lib import catalog
from stages.lib.artifacts import verify
from stages.lib.catalog import load_classifier


def test_classification_metrics_by_hand():
    probabilities = np.full((4, 100), 0.001)
    probabilities[0, 3] = probabilities[1, 5] = 0.9  # right, wrong (true 4)
    probabilities[2, :6] = [0.5, 0.2, 0.1, 0.05, 0.04, 0.03]  # true 4: in the top five
    probabilities[3, 7] = 0.9  # true 99: not in the top five
    probabilities[[1, 3], 10:14] = [0.05, 0.04, 0.03, 0.02]  # no ties with the true class's 0.001
    labels = np.array([3, 4, 4, 99])
    metrics, matrix = evaluate.classification_metrics(probabilities, labels)
    assert metrics["test_accuracy"] == 0.25
    assert metrics["test_top5_accuracy"] == 0.5
    assert metrics["test_loss"] == pytest.approx(-np.log([0.9, 0.001, 0.04, 0.001]).mean())
    assert matrix.sum() == 4 and matrix[3, 3] == 1 and matrix[4, 5] == 1 and matrix[99, 7] == 1


def test_the_second_view_is_the_prediction_of_the_mirror_images():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(100, activation="softmax")])
    mirrored = images[:, :, ::-1]  # (N, H, W, C): left to right
    views = evaluate.view_probabilities(model, images, batch_size=2, flip_average=True)
    assert views.shape == (2, 3, 100)
    np.testing.assert_allclose(views[0], model.predict(images.astype("float32"), verbose=0), atol=1e-6)
    np.testing.assert_allclose(views[1], model.predict(mirrored.astype("float32"), verbose=0), atol=1e-6)
    assert not np.allclose(views[0], views[1])  # a dense layer on pixels is not mirror-symmetric
    np.testing.assert_array_equal(evaluate.view_probabilities(model, images, 2, flip_average=False), views[:1])


@pytest.mark.parametrize("flip_average", [True, False])
def test_evaluate_outputs(tmp_path, split_artifact, model_artifact, smoke, flip_average):
    output = tmp_path / "evaluation"
    config = smoke.evaluate.model_copy(update={"flip_average": flip_average})
    manifest = evaluate.STAGE.execute(config, {"split": split_artifact, "model": model_artifact}, output)
    assert verify(output)["digest"] == manifest["digest"]
    metrics = json.loads((output / "metrics.json").read_text())
    predictions = pd.read_parquet(output / "predictions.parquet")
    assert metrics["test_accuracy"] == (predictions["predicted"] == predictions["label"]).mean()
    test = catalog.read_table(split_artifact, "test")
    single_view = load_classifier(model_artifact).predict(test.images.astype("float32"), verbose=0).argmax(axis=1)
    assert metrics["test_accuracy_single_view"] == pytest.approx((single_view == test.labels).mean())
    if not flip_average:
        assert metrics["test_accuracy_single_view"] == metrics["test_accuracy"]
    assert metrics["test_images"] == 300 and 0 <= metrics["test_accuracy"] <= metrics["test_top5_accuracy"] <= 1
    per_class = pd.read_parquet(output / "per_class.parquet")
    assert len(per_class) == 100 and per_class["images"].sum() == 300 and per_class["name"][0] == "apple"
    assert per_class["accuracy"].mul(per_class["images"]).sum() / 300 == pytest.approx(metrics["test_accuracy"])
    for figure in ("learning_curves", "confusion_matrix", "network"):
        assert (output / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
