"""Consistency SSL: masking rules, strong augmentation, WRN-28-2, EMA weights, the stage on both backends."""

import importlib.util
import json
import os
import random
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import CIFAR_SHAPED

from pipelines.config import load_pipeline_config
from stages import consistency
from stages.consistency import ConsistencyConfig
from stages.lib import catalog, training
from stages.lib.artifacts import ArtifactError
from stages.lib.config import ConfigError
from stages.lib.models import PerImageRandAugment, StrongAugmentConfig, build_strong_augmentation
from stages.lib.ssl_methods import METHODS, FixMatchConfig, FreeMatchConfig, confident, hard_pseudo_labels
from stages.lib.training import Budget, EpochRecorder, TimeBudget, TwoStreamBatches, build_classifier, validation_metrics

PROBABILITIES = np.array([[0.96, 0.02, 0.02],
                          [0.10, 0.85, 0.05],
                          [0.20, 0.30, 0.50],
                          [0.05, 0.00, 0.95]], dtype="float32")


def as_numpy(*tensors):
    return [keras.ops.convert_to_numpy(tensor) for tensor in tensors]


def test_pseudo_labels_are_the_argmax_and_its_probability():
    labels, confidence = as_numpy(*hard_pseudo_labels(PROBABILITIES))
    np.testing.assert_array_equal(labels, [0, 1, 2, 2])
    np.testing.assert_allclose(confidence, [0.96, 0.85, 0.50, 0.95])


def test_the_threshold_is_inclusive_and_may_differ_per_row():
    confidence = np.array([0.94, 0.95, 0.96], dtype="float32")
    np.testing.assert_array_equal(confident(confidence, np.float32(0.95)), [False, True, True])
    np.testing.assert_array_equal(confident(confidence, np.array([0.9, 0.99, 0.96], "float32")), [True, False, True])


def test_fixmatch_masks_below_its_fixed_threshold():
    method = METHODS["fixmatch"](FixMatchConfig(threshold=0.95))
    labels, mask = as_numpy(*method(PROBABILITIES, training=True))
    np.testing.assert_array_equal(labels, [0, 1, 2, 2])
    np.testing.assert_array_equal(mask, [1, 0, 0, 1])


def test_freematch_thresholds_start_low_and_follow_the_model():
    method = METHODS["freematch"](FreeMatchConfig(momentum=0.5))
    labels, mask = as_numpy(*method(PROBABILITIES, training=True))
    # after one update: global = 0.5/3 + 0.5 * mean confidence; per class scaled by its max-normalised share
    mean_confidence = PROBABILITIES.max(axis=1).mean()
    global_threshold = 0.5 / 3 + 0.5 * mean_confidence
    class_confidence = 0.5 / 3 + 0.5 * PROBABILITIES.mean(axis=0)
    thresholds = class_confidence / class_confidence.max() * global_threshold
    np.testing.assert_allclose(keras.ops.convert_to_numpy(method.global_threshold), global_threshold, rtol=1e-6)
    np.testing.assert_array_equal(mask, PROBABILITIES.max(axis=1) >= thresholds[labels])
    assert mask.sum() == 3  # the 0.50 prediction of a rare class stays out; the bar is below FixMatch's 0.95
    before = keras.ops.convert_to_numpy(method.global_threshold)
    method(PROBABILITIES, training=False)  # inference never moves the thresholds
    assert keras.ops.convert_to_numpy(method.global_threshold) == before


def test_freematch_started_from_a_trained_model_begins_at_its_confidence():
    fresh, started = (METHODS["freematch"](FreeMatchConfig()) for _ in range(2))
    for method in (fresh, started):
        method.build((None, 3))
    started.start_from(PROBABILITIES)
    np.testing.assert_allclose(*as_numpy(started.global_threshold), PROBABILITIES.max(axis=1).mean(), rtol=1e-6)
    np.testing.assert_allclose(*as_numpy(started.class_confidence), PROBABILITIES.mean(axis=0), rtol=1e-6)
    # thresholds 0.815 * (0.86, 0.77, 1.0): the 0.50 prediction stays out; at 1/C every prediction passes
    np.testing.assert_array_equal(*as_numpy(started(PROBABILITIES)[1]), [1, 1, 0, 1])
    np.testing.assert_array_equal(*as_numpy(fresh(PROBABILITIES)[1]), [1, 1, 1, 1])
    fixmatch = METHODS["fixmatch"](FixMatchConfig(threshold=0.95))
    fixmatch.start_from(PROBABILITIES)  # no state: its mask stays the fixed threshold's
    np.testing.assert_array_equal(*as_numpy(fixmatch(PROBABILITIES)[1]), [1, 0, 0, 1])


def test_strong_augmentation_keeps_shape_and_range_and_differs_per_image():
    images = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)), 16, axis=0).astype("float32")
    strong = build_strong_augmentation(StrongAugmentConfig(num_ops=2, magnitude=0.9, cutout=0.5), seed=0)
    views = keras.ops.convert_to_numpy(strong(images, training=True))
    assert views.shape == images.shape
    assert views.min() >= 0 and views.max() <= 255
    assert len({view.tobytes() for view in views}) == 16  # the same image, 16 different strong views
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strong(images, training=False)), images)


class AddConstant(keras.layers.Layer):
    """Stands in for a RandAugment operation: adds its own constant, so the sum names the operations."""

    def __init__(self, constant: float):
        super().__init__()
        self.constant = constant

    def get_random_transformation(self, data, training=True, seed=None):
        return None

    def transform_images(self, images, transformation, training=True):
        return images + self.constant


@pytest.mark.parametrize("count", [7, 3, 12])  # a last group filled with repeats, fewer images than operations, exact
def test_rand_augment_gives_each_image_one_operation_a_round_in_equal_groups(count):
    class ThreeOperations(PerImageRandAugment):
        _AUGMENT_LAYERS = ["first", "second", "third"]

    layer = ThreeOperations(value_range=(0, 255), num_ops=1, seed=0)
    layer.first, layer.second, layer.third = AddConstant(1.0), AddConstant(10.0), AddConstant(100.0)
    added = keras.ops.convert_to_numpy(layer(np.zeros((count, 2, 2, 1), "float32"), training=True))[:, 0, 0, 0]
    size = -(-count // 3)
    assert sorted(np.unique(added, return_counts=True)[1]) == sorted(
        n for n in (min(size, count - k * size) for k in range(3)) if n > 0)
    layer.num_ops = 2
    twice = keras.ops.convert_to_numpy(layer(np.zeros((count, 2, 2, 1), "float32"), training=True))[:, 0, 0, 0]
    assert set(twice) <= {a + b for a in (1, 10, 100) for b in (1, 10, 100)}  # exactly two operations each


def test_wrn_28_2_has_the_published_size():
    config = load_pipeline_config("ssl-gpu").consistency.classifier
    model = build_classifier(config, CIFAR_SHAPED)
    assert model.count_params() == pytest.approx(1.47e6, rel=0.01)  # WRN-28-2 with 100 classes: 1.47M
    assert model.output_shape == (None, 100)


def test_the_gpu_preset_decays_kernels_as_usb_does():
    """USB's weight decay 1e-3 is PyTorch's: 1e-3 * w added to the gradient of every conv and dense
    kernel (BatchNorm and biases skipped), before momentum. Keras' decoupled weight_decay is not that."""
    config = load_pipeline_config("ssl-gpu").consistency.classifier
    model = build_classifier(config, CIFAR_SHAPED)
    penalty = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    kernels = [w for w in model.trainable_weights if len(w.shape) > 1]
    assert config.weight_decay == 0
    assert penalty == pytest.approx(1e-3 / 2 * sum(float(np.sum(np.square(keras.ops.convert_to_numpy(w)))) for w in kernels), rel=1e-4)
    assert len(model.losses) == len(kernels)  # one penalty per kernel, none on BatchNorm or biases


def test_initial_weights_follow_the_seed_alone():
    """Equal whatever else draws from Python's global ``random`` meanwhile (other threads of a flow
    process do); and no two WRN convolutions start from the same kernel."""
    config = load_pipeline_config("ssl-gpu").consistency.classifier
    first = build_classifier(config, CIFAR_SHAPED).get_weights()
    random.random()
    second = build_classifier(config, CIFAR_SHAPED).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    kernels = [w for w in first if w.ndim == 4]
    assert len({w.tobytes() for w in kernels}) == len(kernels)


def test_every_registered_method_has_its_section_in_the_stage_config():
    for name in METHODS:
        assert ConsistencyConfig.model_fields[name].annotation is METHODS[name].config_type


def test_configuration_errors_name_the_field():
    with pytest.raises(ConfigError, match="consistency.fixmatch.threshold"):
        load_pipeline_config("smoke", [{"consistency": {"fixmatch": {"threshold": 1.5}}}])
    with pytest.raises(ConfigError, match="consistency.method"):
        load_pipeline_config("smoke", [{"consistency": {"method": "mixmatch"}}])
    with pytest.raises(ConfigError, match="consistency.*set concatenate_views to false"):
        load_pipeline_config("smoke", [{"consistency": {"strong_fraction": 0.5}}])
    with pytest.raises(ConfigError, match="consistency.*set concatenate_views to false"):
        load_pipeline_config("smoke", [{"consistency": {"target_view": "clean"}}])


def smoke_consistency(smoke, **update) -> ConsistencyConfig:
    return smoke.consistency.model_copy(update=update)


def trainable_weights(model):
    return as_numpy(*model.trainable_variables)  # the EMA averages these; BatchNorm statistics are averages already


def test_the_kept_and_validated_weights_are_the_ema_weights(split_artifact, smoke):
    """Raw training is the same in both runs; an EMA that barely moves after its first step keeps a
    model near the start, one that follows the raw weights does not, and in each run the history's
    validation loss is the kept model's."""
    labeled, validation = catalog.read_table(split_artifact, "labeled"), catalog.read_table(split_artifact, "validation")
    images = np.concatenate([labeled.images, catalog.read_table(split_artifact, "unlabeled").images])
    keras.utils.set_random_seed(smoke.consistency.classifier.seed)
    initial = trainable_weights(build_classifier(smoke.consistency.classifier, CIFAR_SHAPED))
    moved = {}
    for momentum in (0.999999, 1e-6):
        # 4 steps an epoch: with 2, both EMAs keep weights only one step apart
        config = smoke_consistency(smoke, ema_momentum=momentum, steps_per_epoch=4)
        kept, history, best_epoch = consistency.train(config, CIFAR_SHAPED, labeled, validation, images)
        moved[momentum] = max(float(np.abs(a - b).max()) for a, b in zip(trainable_weights(kept), initial))
        assert validation_metrics(kept, validation, 500)["val_loss"] == pytest.approx(
            history["val_loss"].iloc[best_epoch - 1], abs=1e-4)
    assert 0 < moved[0.999999] < moved[1e-6] / 1.5


def test_pixels_travel_as_uint8_and_the_model_casts_them(split_artifact, smoke):
    """The host sends a quarter of the bytes; the model's training step sees the float32 pixels."""
    labeled = catalog.read_table(split_artifact, "labeled")
    (labeled_images, unlabeled_images), _ = TwoStreamBatches(labeled, 100, labeled.images, 8, 16, seed=0)[0]
    assert labeled_images.dtype == unlabeled_images.dtype == np.uint8
    model = consistency.ConsistencyModel(build_classifier(smoke.consistency.classifier, CIFAR_SHAPED), smoke_consistency(smoke))
    as_uint8 = model((labeled_images, unlabeled_images), training=False)["labeled"]
    as_float = model((labeled_images.astype("float32"), unlabeled_images.astype("float32")), training=False)["labeled"]
    np.testing.assert_allclose(*as_numpy(as_uint8, as_float), rtol=1e-6)


def pixel_softmax_model(smoke, threshold: float, dropout: float = 0.0, **update):
    """A dense softmax on pixels (no BatchNorm: the views' passes then agree; ``dropout`` in front of it) in a
    ConsistencyModel whose strong view is the image itself, and random data for it: 8 labeled images, their
    labels and 16 unlabeled images. (model, labeled, labels, unlabeled), the same each call."""
    rng = np.random.default_rng(0)
    labeled, unlabeled = (rng.integers(0, 256, (n, *(32, 32, 3)), dtype="uint8") for n in (8, 16))
    labels = training.one_hot(rng.integers(0, 100, 8), 100)
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                   *([keras.layers.Dropout(dropout)] if dropout else []),
                                   keras.layers.Dense(100, activation="softmax")])
    config = smoke_consistency(smoke, fixmatch=FixMatchConfig(threshold=threshold), strong=StrongAugmentConfig(num_ops=0, cutout=0.0), **update,
                               classifier=smoke.consistency.classifier.model_copy(update={"batch_size": 8}),
                               unlabeled_ratio=2)
    return consistency.ConsistencyModel(classifier, config), labeled, labels, unlabeled


def one_step(smoke, threshold: float, **update):
    """``pixel_softmax_model``'s training-mode outputs, its weights before and after one SGD step and the step's
    metrics, and its confidence on the unlabeled images."""
    model, labeled, labels, unlabeled = pixel_softmax_model(smoke, threshold, **update)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    outputs = {name: keras.ops.convert_to_numpy(value) for name, value in model((labeled, unlabeled), training=True).items()}
    start, confidence = model.classifier.get_weights(), model.classifier.predict(unlabeled, verbose=0).max(axis=1)
    metrics = model.train_on_batch((labeled, unlabeled), labels, return_dict=True)
    return outputs, start, model.classifier.get_weights(), metrics, confidence


def assert_same_step(one, other):
    (_, start, one_weights, one_metrics, _), (_, _, other_weights, other_metrics, _) = one, other
    for after_one, after_other, before in zip(one_weights, other_weights, start):
        assert np.abs(after_one - before).max() > 1e-4  # the step moved the weights, and alike
        np.testing.assert_allclose(after_one, after_other, rtol=1e-4, atol=1e-6)
    for name in ("loss", "unsupervised_loss", "mask_rate"):
        assert one_metrics[name] == pytest.approx(other_metrics[name], rel=1e-5)


def test_the_weak_view_s_own_pass_predicts_and_trains_as_the_shared_pass_does(smoke):
    """Every image a target (a softmax over 100 classes peaks at 0.01 or more): the weak view's pass of its
    own gives the same predictions, targets and training step as one pass over every view."""
    shared, own = (one_step(smoke, 0.001, concatenate_views=concatenate) for concatenate in (True, False))
    assert shared[0]["mask"].all() and len(np.unique(shared[0]["pseudo_labels"])) > 1
    for name in shared[0]:
        np.testing.assert_allclose(shared[0][name], own[0][name], rtol=1e-5, atol=1e-7)
    assert_same_step(shared, own)


def test_strong_views_go_to_the_images_with_targets_first(smoke):
    """Half of the unlabeled images pass the threshold: strong views for half of them train exactly as
    strong views for all (the others' loss is masked to zero); for a quarter, the surest quarter gets them
    and the other targets are counted as capped."""
    confidence = one_step(smoke, 0.001, concatenate_views=False)[4]
    threshold = float(np.sort(confidence)[len(confidence) // 2])  # 8 of 16 reach it
    every = one_step(smoke, threshold, concatenate_views=False)
    half = one_step(smoke, threshold, concatenate_views=False, strong_fraction=0.5)
    assert every[3]["mask_rate"] == pytest.approx(0.5) and half[3]["capped_rate"] == 0
    assert len(half[0]["strong"]) == 8 and half[0]["mask"].all()
    assert_same_step(every, half)
    quarter = one_step(smoke, threshold, concatenate_views=False, strong_fraction=0.25)
    assert quarter[3]["mask_rate"] == pytest.approx(0.5) and quarter[3]["capped_rate"] == pytest.approx(0.25)
    surest = np.sort(np.argsort(confidence)[-4:])
    np.testing.assert_array_equal(np.sort(quarter[0]["pseudo_labels"]), np.sort(every[0]["pseudo_labels"][surest]))


def test_clean_targets_are_the_inference_mode_predictions_of_the_images(smoke):
    """Behind heavy dropout, a training-mode pass scatters the targets; target_view clean takes them from
    the inference-mode pass over the images, the predictions the self-training stage labels with."""
    targets = {}
    for view in ("clean", "weak"):  # the same weights and images each time
        model, labeled, _, unlabeled = pixel_softmax_model(smoke, 0.001, dropout=0.9, concatenate_views=False, target_view=view)
        targets[view] = keras.ops.convert_to_numpy(model((labeled, unlabeled), training=True)["pseudo_labels"])
    inference = model.classifier.predict(unlabeled, verbose=0).argmax(axis=1)
    np.testing.assert_array_equal(targets["clean"], inference)
    assert (targets["weak"] != inference).mean() > 0.5


def test_the_stage_writes_a_classifier_with_its_evidence(split_artifact, smoke, tmp_path):
    manifest = consistency.STAGE.execute(smoke.consistency, {"split": split_artifact}, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert manifest["stage"] == "consistency"
    assert metrics["steps"] == smoke.consistency.steps_per_epoch * smoke.consistency.classifier.epochs
    history = pd.read_parquet(tmp_path / "out" / "history.parquet")
    assert {"supervised_loss", "unsupervised_loss", "mask_rate", "val_accuracy"} <= set(history.columns)
    model = keras.saving.load_model(tmp_path / "out" / "model.keras")
    assert model.output_shape == (None, 100)


def budget_on(model: keras.Model, budget: Budget, recorder: EpochRecorder, epochs: int, steps: int) -> TimeBudget:
    callback = TimeBudget(budget, recorder)
    callback.set_model(model)
    callback.set_params({"epochs": epochs, "steps": steps})
    return callback


def learning_rate_of(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def sgd_model() -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd")
    return model


@pytest.mark.parametrize("epoch_seconds, stops", [(25.0, False), (31.0, True)])
def test_a_resumed_time_budget_goes_on_from_the_epochs_already_spent(epoch_seconds, stops, monkeypatch):
    """Restored from a checkpoint, 60 s of a 120 s budget are spent: the cosine is at its middle, not
    back at the peak, and training stops when one more epoch like this one would overrun the budget."""
    recorder = EpochRecorder(epochs=10)
    recorder.rows = [{"epoch": 1, "epoch_seconds": 30.0}, {"epoch": 2, "epoch_seconds": 30.0}]  # as restored
    model = sgd_model()
    budget = budget_on(model, Budget(120, peak_learning_rate=0.1), recorder, epochs=10, steps=5)
    clock = iter([1000.0, 1000.0, 1000.0 + epoch_seconds])  # the epoch's begin, its first step, its end
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    budget.on_train_begin()
    budget.on_epoch_begin(2)
    budget.on_train_batch_begin(0)
    assert learning_rate_of(model) == pytest.approx(0.05, rel=1e-3)  # 60 of 120 s spent, 10 of 50 steps
    budget.on_epoch_end(2)
    assert bool(model.stop_training) is stops  # 60 + 2 x 25 fits in 120 s, 60 + 2 x 31 does not


def test_a_time_budget_warms_up_then_ends_where_the_epochs_do_when_they_come_first(monkeypatch):
    """A budget far beyond what the epochs take: the warm-up ramps over the first epoch's steps and the
    cosine follows the steps, reaching 0 at the last one."""
    model = sgd_model()
    budget = budget_on(model, Budget(1e6, peak_learning_rate=0.1, warmup_epochs=1), EpochRecorder(epochs=4), epochs=4, steps=10)
    monkeypatch.setattr(training.time, "perf_counter", lambda: 1000.0)  # no time passes
    budget.on_train_begin()
    budget.on_epoch_begin(0)
    budget.on_train_batch_begin(4)  # step 5 of 10 warming up, 4 of 40 steps spent
    assert learning_rate_of(model) == pytest.approx(0.1 * 0.5 * 0.5 * (1 + np.cos(np.pi * 0.1)), rel=1e-4)
    budget.on_epoch_begin(3)
    budget.on_train_batch_begin(9)  # the last step
    assert learning_rate_of(model) < 0.001


def test_a_time_budget_stops_training_early(split_artifact, smoke, tmp_path):
    classifier = smoke.consistency.classifier.model_copy(update={"epochs": 50, "time_budget_minutes": 0.05})  # 3 s: less
    config = smoke_consistency(smoke, classifier=classifier)  # than the first epoch
    consistency.STAGE.execute(config, {"split": split_artifact}, tmp_path / "out")
    history = pd.read_parquet(tmp_path / "out" / "history.parquet")
    assert len(history) == 1
    assert history["learning_rate"].iloc[0] < config.classifier.learning_rate  # it followed the clock


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
@pytest.mark.parametrize("concatenate_views, strong_fraction, target_view", [(True, 1.0, "weak"), (False, 0.5, "clean")])
def test_freematch_trains_on_the_jax_backend(concatenate_views, strong_fraction, target_view, split_artifact, smoke, tmp_path):
    config = smoke_consistency(smoke, method="freematch", concatenate_views=concatenate_views, strong_fraction=strong_fraction,
                               target_view=target_view)
    (tmp_path / "config.json").write_text(config.model_dump_json())
    subprocess.run([sys.executable, "-m", "stages.consistency", "--config", str(tmp_path / "config.json"),
                    "--input", f"split={split_artifact}", "--output", str(tmp_path / "out")],
                   env={**os.environ, "KERAS_BACKEND": "jax"}, check=True, capture_output=True)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["backend"] == "jax"
    history = pd.read_parquet(tmp_path / "out" / "history.parquet")
    assert np.isfinite(history["unsupervised_loss"]).all() and (history["mask_rate"] > 0).all()


COMPILED_MODELS = """
from pipelines.config import load_pipeline_config
from stages.consistency import ConsistencyModel
from stages.lib.training import build_classifier
from stages.lib.catalog import DatasetInfo
from stages.lib.objectives import build_objective
config = load_pipeline_config("ssl-gpu")
data = DatasetInfo([str(label) for label in range(100)], (32, 32, 3), "crop")
models = [ConsistencyModel(build_classifier(config.consistency.classifier, data), config.consistency),
          build_objective(load_pipeline_config("quick", [{"pretrain": {"objective": "simclr"}}]).pretrain.objective_setup((32, 32, 3)))]
for model in models:
    model.compile(optimizer="sgd")
print([model.jit_compile for model in models])
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_models_with_geometric_augmentation_are_compiled_on_jax_only():
    """Keras' translation, zoom and shear layers turn XLA off for a whole model (TensorFlow has no XLA
    kernel for them); under JAX that left every step un-jitted, op by op (over 1 s per step on an H200)."""
    on_jax = subprocess.run([sys.executable, "-c", COMPILED_MODELS], env={**os.environ, "KERAS_BACKEND": "jax"},
                            check=True, capture_output=True, text=True)
    assert on_jax.stdout.split("\n")[-2] == "[True, True]"
    classifier = build_classifier(load_pipeline_config("ssl-gpu").consistency.classifier, CIFAR_SHAPED)
    classifier.compile(optimizer="sgd")
    assert keras.backend.backend() == "tensorflow" and classifier.jit_compile is False  # XLA is slower on this CPU


def kernels(model):
    return [w for w in model.get_weights() if w.ndim > 1]  # conv and dense kernels: BatchNorm statistics move in any step


@pytest.mark.parametrize("method", ["fixmatch", "freematch"])  # freematch's thresholds start from the model's confidence
def test_a_warm_start_begins_at_the_input_models_weights(method, split_artifact, model_artifact, smoke, tmp_path):
    """With a vanishing learning rate the kept (EMA) classifier is the input model; a fresh start is not."""
    frozen = smoke.consistency.classifier.model_copy(update={"learning_rate": 1e-12})
    start = keras.saving.load_model(model_artifact / "model.keras")
    for warm, inputs in ((True, {"split": split_artifact, "model": model_artifact}), (False, {"split": split_artifact})):
        config = smoke_consistency(smoke, warm_start=warm, classifier=frozen, method=method)
        manifest = consistency.STAGE.execute(config, inputs, tmp_path / str(warm))
        kept = keras.saving.load_model(tmp_path / str(warm) / "model.keras")
        same = [np.allclose(a, b, atol=1e-6) for a, b in zip(kernels(kept), kernels(start))]
        assert all(same) if warm else not any(same)
        assert set(manifest["parents"]) == set(inputs)
        assert ("model/model.keras" in manifest["reads"]) == warm


@pytest.mark.parametrize("start_accuracy", [1.0, 0.0])
def test_the_warm_start_is_kept_when_no_epoch_beats_it_on_validation(start_accuracy, split_artifact, model_artifact, smoke,
                                                                     tmp_path, monkeypatch):
    """The input model is epoch 0: kept when its validation accuracy is at least every epoch's."""
    monkeypatch.setattr(consistency, "validation_metrics", lambda model, validation, batch_size: {"val_accuracy": start_accuracy})
    output = tmp_path / "out"
    consistency.STAGE.execute(smoke_consistency(smoke, warm_start=True), {"split": split_artifact, "model": model_artifact}, output)
    kept = keras.saving.load_model(output / "model.keras")
    start = keras.saving.load_model(model_artifact / "model.keras")
    same = all(np.array_equal(a, b) for a, b in zip(kept.get_weights(), start.get_weights()))
    best_epoch = json.loads((output / "metrics.json").read_text())["best_epoch"]
    if start_accuracy == 1.0:  # no epoch reaches it
        assert best_epoch == 0 and same
    else:
        assert best_epoch >= 1 and not same


def test_a_warm_start_needs_a_model_of_the_configured_network(split_artifact, model_artifact, smoke, tmp_path):
    with pytest.raises(ValueError, match=r"warm_start is true but no model input.*--input model=DIR"):
        consistency.STAGE.execute(smoke_consistency(smoke, warm_start=True), {"split": split_artifact}, tmp_path / "a")
    with pytest.raises(ValueError, match=r"got a model input but warm_start is false.*consistency.warm_start=true"):
        consistency.STAGE.execute(smoke.consistency, {"split": split_artifact, "model": model_artifact}, tmp_path / "b")
    wider = smoke.consistency.classifier.architecture.model_copy(update={"filters": (8, 32)})
    config = smoke_consistency(smoke, warm_start=True, classifier=smoke.consistency.classifier.model_copy(update={"architecture": wider}))
    with pytest.raises(ArtifactError, match=r"not the network consistency.classifier.architecture builds.*architecture"):
        consistency.STAGE.execute(config, {"split": split_artifact, "model": model_artifact}, tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing written
