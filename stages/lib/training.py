"""Supervised training of a classifier with Keras' own fit loop and callbacks."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import pandas as pd
from keras import layers
from pydantic import Field, model_validator

from stages.lib.artifacts import checkpoint_directory, record_progress, replace_text
from stages.lib.catalog import DatasetInfo, ImageTable
from stages.lib.config import StrictModel
from stages.lib.errors import UserError
from stages.lib.models import (
    INFERENCE_BATCH,
    ArchitectureConfig,
    AugmentConfig,
    Precision,
    WeightSeeds,
    build_augmentation,
    build_encoder,
    build_scaling,
    resolve_precision,
)

log = logging.getLogger(__name__)


class Schedule(StrictModel):
    """A config with ``epochs`` and ``warmup_epochs``: the warm-up must end inside the schedule."""

    @model_validator(mode="after")
    def _warmup_inside_schedule(self) -> Schedule:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


class TrainConfig(Schedule):
    """How a classifier is built and trained: the baseline stage's config, and the classifier that the
    fine_tune and consistency stages train."""

    architecture: ArchitectureConfig = ArchitectureConfig()
    augment: AugmentConfig = AugmentConfig()
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(100, ge=1, description="maximum epochs; the cosine decay spans all of them")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="sgd = Nesterov momentum 0.9 (FixMatch's)")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up to the peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay on every weight: each step "
                                "multiplies it by 1 - learning_rate * weight_decay, which SGD's momentum does not "
                                "amplify (PyTorch's coupled weight_decay is architecture.l2)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping_patience: int | None = Field(
        4, ge=1, description="epochs without val improvement before stopping; None = never stop"
    )
    select_on: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="validation metric that picks the epoch whose weights are kept"
    )
    precision: Precision = "float32"
    seed: int = Field(0, description="seed of initialisation, shuffling and augmentation")
    time_budget_minutes: float | None = Field(
        None, gt=0, description="train for this much wall time at most (epochs stay the upper bound): the learning rate "
                                "then follows the share of the budget spent instead of the step count, and training "
                                "stops before an epoch would overrun it. None = run every epoch")


def build_classifier(config: TrainConfig, data: DatasetInfo) -> keras.Model:
    """augmentation -> scale to [-1, 1] -> encoder -> [dense] -> [dropout] -> softmax (float32) over ``data``'s classes."""
    arch, dtype = config.architecture, resolve_precision(config.precision)
    regularizer = keras.regularizers.L2(arch.l2) if arch.l2 else None
    images = keras.Input(data.image_shape, name="image")  # uint8 values, passed as float32
    augmentation = build_augmentation(config.augment, config.seed)
    x = augmentation(images) if augmentation.layers else images
    x = build_scaling()(x)
    x = build_encoder(arch, data.image_shape, dtype, config.seed)(x)
    seeds = WeightSeeds(config.seed, "head")
    if arch.dense_units:
        x = layers.Dense(arch.dense_units, activation="relu", kernel_initializer=seeds(), kernel_regularizer=regularizer,
                         dtype=dtype, name="dense")(x)
    if arch.head_dropout:
        x = layers.Dropout(arch.head_dropout, dtype=dtype, name="head_dropout")(x)
    # the output layer stays float32 so the softmax and the loss are computed at full precision
    probabilities = layers.Dense(data.num_classes, activation="softmax", kernel_initializer=seeds(), kernel_regularizer=regularizer,
                                 dtype="float32", name="probabilities")(x)
    return keras.Model(images, probabilities, name=f"{arch.name}_classifier")


class EpochRecorder(keras.callbacks.Callback):
    """Records each epoch's logs, learning rate and wall time, and prints progress with an ETA: the
    epochs left at this fit's pace, or less when a time budget of ``budget_seconds`` ends sooner."""

    def __init__(self, epochs: int, budget_seconds: float | None = None):
        super().__init__()
        self.epochs, self.budget_seconds = epochs, budget_seconds
        self.rows: list[dict[str, float]] = []
        self._train_start = self._epoch_start = 0.0
        self._epochs_this_fit = 0  # a resumed fit starts past epochs that took no time in it

    def on_train_begin(self, logs=None):
        self._train_start = time.perf_counter()
        self._epochs_this_fit = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        optimizer = self.model.optimizer
        row = {
            "epoch": epoch + 1,
            **{key: float(value) for key, value in (logs or {}).items()},
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "epoch_seconds": now - self._epoch_start,
            "timestamp_ms": time.time() * 1000,
        }
        self.rows.append(row)
        self._epochs_this_fit += 1
        per_epoch = (now - self._train_start) / self._epochs_this_fit
        eta = per_epoch * (self.epochs - epoch - 1)
        if self.budget_seconds is not None:  # the rows include epochs restored from a checkpoint
            eta = min(eta, max(self.budget_seconds - training_seconds(self.history()), 0.0))
        values = "  ".join(f"{key} {float(value):.4g}" for key, value in (logs or {}).items())
        log.info("epoch %d/%d  %s | %.1f s/epoch, ETA %dm%02ds (at most)", epoch + 1, self.epochs, values,
                 row["epoch_seconds"], eta // 60, eta % 60)

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def training_seconds(history: pd.DataFrame) -> float:
    """Seconds the epochs of ``history`` took. A resumed fit restores its history from the checkpoint,
    so this counts the epochs before an interruption too (a clock around ``fit`` would not) and never
    the time the run lay dead."""
    return float(history["epoch_seconds"].sum()) if len(history) else 0.0


@dataclass
class TrainingResult:
    model: keras.Model
    history: pd.DataFrame  # one row per epoch
    best_epoch: int  # 1-based epoch whose weights the model holds
    images_per_second: float

    @property
    def seconds(self) -> float:
        return training_seconds(self.history)


def cosine_schedule(config: Schedule, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to ``config.learning_rate``, then cosine decay to 0 at the last step."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=total - warmup,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


class NonFiniteValue(UserError, RuntimeError):
    """A loss or metric became NaN or infinite: training diverged."""


class FiniteGuard(keras.callbacks.Callback):
    """Stops training with a clear error at the first NaN or infinite loss (per step) or metric (per epoch)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, ("loss",), f"epoch {self.epoch}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, tuple(logs or ()), f"the end of epoch {epoch + 1}")

    @staticmethod
    def _check(logs, keys, where: str) -> None:
        for key in keys:
            value = float(keras.ops.convert_to_numpy((logs or {}).get(key, 0.0)))
            if not math.isfinite(value):
                raise NonFiniteValue(
                    f"{key} became {value} at {where}: training diverged. Lower learning_rate, "
                    "set or lower clipnorm, or train in float32 (precision)"
                )


def build_optimizer(config: TrainConfig, learning_rate, **options) -> keras.optimizers.Optimizer:
    """``config``'s optimizer at ``learning_rate`` (a float or a schedule); ``options`` such as
    ``use_ema`` go to the Keras optimizer."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay, **options)
    return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay, **options)


@dataclass(frozen=True)
class Budget:
    """A fit that trains for wall time: ``seconds`` at most, its learning rate warming up over
    ``warmup_epochs`` to ``peak_learning_rate``, then following the share of the run spent."""

    seconds: float
    peak_learning_rate: float
    warmup_epochs: int = 0

    @classmethod
    def of(cls, config: TrainConfig) -> Budget | None:
        if config.time_budget_minutes is None:
            return None
        return cls(config.time_budget_minutes * 60, config.learning_rate, config.warmup_epochs)


class TimeBudget(keras.callbacks.Callback):
    """Trains for ``budget.seconds`` of wall time or the fit's epochs, whichever ends first. Each step's
    learning rate is the warm-up ramp times the cosine of the share of the run spent, the larger of
    the time and the steps spent (a step-count schedule cannot know how many steps will fit), so it
    reaches 0 where the run ends. Training stops before an epoch that would overrun the budget, judged
    by the last epoch's time. A resumed fit goes on where it stopped: the epochs already in
    ``recorder``'s history count as spent."""

    def __init__(self, budget: Budget, recorder: EpochRecorder):
        super().__init__()
        self.budget, self.recorder = budget, recorder
        self._start: float | None = None
        self._epoch_start = 0.0
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._start = None  # set by the first epoch, once a checkpoint has restored the history

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._epoch = time.perf_counter(), epoch
        if self._start is None:
            self._start = self._epoch_start - training_seconds(self.recorder.history())

    def on_train_batch_begin(self, batch, logs=None):
        steps_per_epoch = self.params["steps"]
        step = self._epoch * steps_per_epoch + batch
        spent = max((time.perf_counter() - self._start) / self.budget.seconds, step / (self.params["epochs"] * steps_per_epoch))
        warmup_steps = self.budget.warmup_epochs * steps_per_epoch
        ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        cosine = 0.5 * (1 + math.cos(math.pi * min(spent, 1.0)))
        self.model.optimizer.learning_rate = self.budget.peak_learning_rate * ramp * cosine

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if now - self._start + (now - self._epoch_start) > self.budget.seconds:
            log.info("time budget: %.1f of %.1f min spent, stopping after epoch %d",
                     (now - self._start) / 60, self.budget.seconds / 60, epoch + 1)
            self.model.stop_training = True


class TwoStreamBatches(keras.utils.PyDataset):
    """Per step: a labeled batch (images, one-hot labels) and a random batch of ``images``.

    An epoch is ``steps`` steps, one pass over the labels by default; labeled rows are drawn from
    fresh permutations, as many as the epoch needs. Like ``EpochBatches``, what a step holds
    depends on (seed, epoch, step) alone. Images stay uint8 (the model casts them on the device):
    a quarter of the bytes to move, and no host-side float32 copy of 2,048 images a step, which
    cost the H200 run about 12 ms of its 52 ms steps."""

    def __init__(self, labeled: ImageTable, num_classes: int, images: np.ndarray, batch_size: int, unlabeled_batch_size: int,
                 seed: int, steps: int | None = None):
        super().__init__()
        self.labeled, self.targets, self.images = labeled, one_hot(labeled.labels, num_classes), images
        self.batch_size, self.unlabeled_batch_size = batch_size, unlabeled_batch_size
        self.steps = steps or math.ceil(len(labeled) / batch_size)
        self.seed = seed
        self.rows = EpochRows()
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        rows = self.rows["labeled"][index * self.batch_size:(index + 1) * self.batch_size]
        inputs = (self.labeled.images[rows], self.images[self.rows["unlabeled"][index]])
        return inputs, self.targets[rows]

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        passes = math.ceil(self.steps * self.batch_size / len(self.labeled))
        self.rows.set(
            labeled=np.concatenate([rng.permutation(len(self.labeled)) for _ in range(passes)]),
            unlabeled=np.stack([  # (steps, unlabeled_batch_size)
                np.random.default_rng([self.seed, epoch, step]).integers(0, len(self.images), self.unlabeled_batch_size)
                for step in range(self.steps)]),
        )

    def tf_dataset(self):
        import tensorflow as tf

        labeled_images, labels = tf.constant(self.labeled.images), tf.constant(self.targets)
        images, rows, size = tf.constant(self.images), self.rows.variables(), self.batch_size

        def batch(step):
            labeled = rows["labeled"][step * size:(step + 1) * size]
            return (tf.gather(labeled_images, labeled), tf.gather(images, rows["unlabeled"][step])), tf.gather(labels, labeled)

        return tf.data.Dataset.range(self.steps).map(batch).prefetch(tf.data.AUTOTUNE)


class EpochBatches(keras.utils.PyDataset):
    """Shuffled batches of in-memory arrays whose order depends on (seed, epoch) alone.

    Keras' own shuffling carries its state from epoch to epoch, so a resumed fit would see other
    batches than an uninterrupted one; ``EpochSeeds`` sets the epoch here before it starts.
    """

    def __init__(self, arrays: tuple[np.ndarray, ...], batch_size: int, seed: int):
        super().__init__()
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.rows = EpochRows()
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil(len(self.arrays[0]) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.rows["order"][index * self.batch_size:(index + 1) * self.batch_size]
        return tuple(array[rows].astype("float32") for array in self.arrays)

    def set_epoch(self, epoch: int) -> None:
        self.rows.set(order=np.random.default_rng([self.seed, epoch]).permutation(len(self.arrays[0])))

    def tf_dataset(self):
        import tensorflow as tf

        arrays, order, size = [tf.constant(array) for array in self.arrays], self.rows.variables()["order"], self.batch_size

        def batch(step):
            rows = order[step * size:(step + 1) * size]
            return tuple(tf.cast(tf.gather(array, rows), "float32") for array in arrays)

        return tf.data.Dataset.range(len(self)).map(batch).prefetch(tf.data.AUTOTUNE)


class EpochRows:
    """The row indices of one epoch's batches, by name: NumPy arrays for ``__getitem__`` and, once a
    tf.data pipeline reads them, TensorFlow variables that ``set`` keeps equal to them."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self._variables: dict = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def set(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays
        for name, variable in self._variables.items():
            variable.assign(arrays[name])

    def variables(self) -> dict:
        import tensorflow as tf

        self._variables = self._variables or {name: tf.Variable(array, trainable=False) for name, array in self.arrays.items()}
        return self._variables


def feed(batches: EpochBatches | TwoStreamBatches):
    """What ``fit`` reads ``batches`` from. On TensorFlow, an in-graph tf.data pipeline that gathers the
    same rows: fed by the PyDataset's Python generator, the quick baseline trained at 133 images/s on
    2 cores against 330 from tf.data, FixMatch at 113 against 137 (bench/results/feed.md). Other
    backends iterate the PyDataset."""
    return batches.tf_dataset() if keras.backend.backend() == "tensorflow" else batches


class EpochSeeds(keras.callbacks.Callback):
    """Keys each epoch's randomness on (seed, epoch): the data order of ``datasets`` and the state of
    every random layer (augmentation, dropout). An epoch then depends only on the weights and
    optimizer state it starts from, which is what makes a resumed fit equal an uninterrupted one."""

    STEPS = 100_000  # room for this many draws per layer and epoch before two epochs' seeds could meet

    def __init__(self, seed: int, datasets: tuple = ()):
        super().__init__()
        self.seed, self.datasets = seed, datasets

    def on_epoch_begin(self, epoch, logs=None):
        for dataset in self.datasets:
            dataset.set_epoch(epoch)
        generators = {id(g): g for layer in self.model._flatten_layers() for g in getattr(layer, "_seed_generators", ())}
        for index, generator in enumerate(generators.values()):
            state = np.array([(self.seed * 7919 + index) % 2**31, epoch * self.STEPS], dtype="int64")
            generator.state.assign(keras.ops.cast(state, generator.state.dtype))


def recalibrate_batchnorm(network: keras.Model, images: np.ndarray, batch_size: int) -> None:
    """Replaces the moving statistics of ``network``'s BatchNorm layers by the mean of their batch
    statistics over ``images`` (N, H, W, 3) in whole batches (precise BatchNorm); weights unchanged.

    A forward pass in training mode, with each layer's momentum k/(k+1) at batch k: the moving
    value is then the running mean of the batches seen so far. The momenta are put back after.
    """
    norms = [layer for layer in network._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    try:
        for k in range(max(1, len(images) // batch_size)):
            for layer in norms:
                layer.momentum = k / (k + 1)
            network(images[k * batch_size:(k + 1) * batch_size].astype("float32"), training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


class BatchNormRecalibration(keras.callbacks.Callback):
    """Before each validation, ``recalibrate_batchnorm`` of ``network`` on ``images`` in a fixed
    shuffled order, so what is validated, selected and kept carries statistics of those images.

    For a network trained inside a larger model whose other inputs pass through its BatchNorm
    layers too (joint fine-tuning: the objective's augmented views), whose moving statistics then
    fit neither stream. The random layers' draws it uses are reset by ``EpochSeeds`` at the next
    epoch, so a resumed fit still equals an uninterrupted one.
    """

    def __init__(self, network: keras.Model, images: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.network, self.batch_size = network, batch_size
        self.images = images[np.random.default_rng(seed).permutation(len(images))]

    def on_test_begin(self, logs=None):
        recalibrate_batchnorm(self.network, self.images, self.batch_size)


class EpochCheckpoint(keras.callbacks.Callback):
    """Like Keras' ``BackupAndRestore``, plus the state of the callbacks that span epochs.

    After every epoch it saves, in ``directory``: the weights with the optimizer state, the epoch
    history recorded so far and the selector's best epoch and weights; a fit started again with
    the same directory resumes after the last saved epoch. Each save goes to a fresh folder and
    only then becomes current (the ``latest`` file is replaced atomically): a kill mid-save leaves
    the previous epoch's checkpoint intact. Place it last, after the callbacks it restores.
    """

    SELECTOR_STATE = ("wait", "best", "best_epoch", "stopped_epoch")  # EarlyStopping's, reset by its on_train_begin

    def __init__(self, directory: Path, recorder: EpochRecorder, selector: keras.callbacks.EarlyStopping | None = None,
                 ema_swap: keras.callbacks.SwapEMAWeights | None = None):
        super().__init__()
        self.directory, self.recorder, self.selector, self.ema_swap = Path(directory), recorder, selector, ema_swap

    def on_train_begin(self, logs=None):
        self.model._initial_epoch = None  # Keras keeps it on the model across fits
        pointer = self.directory / "latest"
        if pointer.is_file():
            self._restore(self.directory / pointer.read_text().strip())

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1}"
        folder = self.directory / name
        shutil.rmtree(folder, ignore_errors=True)  # a save the last attempt did not finish
        folder.mkdir(parents=True)
        self._save(folder, epoch + 1)
        replace_text(self.directory / "latest", name)
        for old in self.directory.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        record_progress()

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None

    def _save(self, folder: Path, epochs_done: int) -> None:
        self.model.save_weights(folder / "model.weights.h5")
        state = {"epoch": epochs_done, "stopped": bool(self.model.stop_training), "history": self.recorder.rows}
        if self.ema_swap is not None:  # whether the weights just saved are the EMA ones
            state["ema_in_model"] = self.ema_swap._ema_weights_in_model
        if self.selector is not None:
            state["selector"] = {name: getattr(self.selector, name) for name in self.SELECTOR_STATE}
            np.savez(folder / "best.npz", *(self.selector.best_weights or []))
        (folder / "state.json").write_text(json.dumps(state, default=float))

    def _restore(self, folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(folder / "model.weights.h5")
        self.recorder.rows = state["history"]
        if self.ema_swap is not None:
            self.ema_swap._ema_weights_in_model = state["ema_in_model"]
        if self.selector is not None:
            for name in self.SELECTOR_STATE:
                setattr(self.selector, name, state["selector"][name])
            with np.load(folder / "best.npz") as best:
                self.selector.best_weights = [best[f"arr_{i}"] for i in range(len(best.files))] or None
        # a fit that had stopped (early stopping, time budget) stays stopped
        self.model._initial_epoch = self.params["epochs"] if state["stopped"] else state["epoch"]
        log.info("resuming from the checkpoint of epoch %d in %s", state["epoch"], folder)


def epoch_callbacks(seed: int, recorder: EpochRecorder, selector: keras.callbacks.EarlyStopping | None = None,
                    datasets: tuple = (), extra: tuple[keras.callbacks.Callback, ...] = ()) -> list[keras.callbacks.Callback]:
    """The callbacks of every fit, in the order they must run: divergence guard, ``extra`` (e.g.
    the EMA swap, which must precede the selector), history, selector, per-epoch seeds and (inside
    a stage's ``exclusive_output``) the resumable checkpoint, last so it saves what the others did."""
    callbacks = [FiniteGuard(), *extra, recorder, *([selector] if selector else []), EpochSeeds(seed, datasets)]
    if (directory := checkpoint_directory()) is not None:
        ema_swap = next((c for c in extra if isinstance(c, keras.callbacks.SwapEMAWeights)), None)
        callbacks.append(EpochCheckpoint(directory, recorder, selector, ema_swap))
    return callbacks


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: the cosine schedule, or under a time budget a value that
    ``TimeBudget`` sets at each step."""
    return config.learning_rate if config.time_budget_minutes else cosine_schedule(config, steps_per_epoch)


def compile_classifier(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=build_optimizer(config, learning_rate(config, steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            # with under 5 classes every label is in the top 5
            keras.metrics.TopKCategoricalAccuracy(min(5, model.output_shape[-1]), name="top5_accuracy"),
        ],
    )


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype="float32")[labels]


def accuracy_and_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy (no smoothing, no penalty) of predicted probabilities (N, C)."""
    true_probability = probabilities[np.arange(len(labels)), labels]
    return (float((probabilities.argmax(axis=1) == labels).mean()),
            float(-np.log(np.clip(true_probability, 1e-7, 1.0)).mean()))


def validation_metrics(model: keras.Model, validation: ImageTable, batch_size: int) -> dict[str, float]:
    """``val_accuracy`` and ``val_loss`` (plain cross-entropy) of a model, in inference mode.

    One measure for models trained differently: Keras' own ``val_loss`` adds each model's L2
    penalty and label smoothing.
    """
    probabilities = model.predict(validation.images.astype("float32"), batch_size=batch_size, verbose=0)
    accuracy, loss = accuracy_and_cross_entropy(probabilities, validation.labels)
    return {"val_accuracy": accuracy, "val_loss": loss}


def train_classifier(config: TrainConfig, data: DatasetInfo, train: ImageTable, validation: ImageTable) -> TrainingResult:
    """Train from scratch; the returned model holds the weights of the best validation epoch."""
    keras.utils.set_random_seed(config.seed)
    return fit_classifier(build_classifier(config, data), config, train, validation)


def fit_classifier(model: keras.Model, config: TrainConfig, train: ImageTable, validation: ImageTable,
                   sample_weight: np.ndarray | None = None) -> TrainingResult:
    """Compile ``model`` with ``config``'s schedule and fit it; keeps the best validation epoch.

    ``sample_weight`` (N,) scales each training image's loss; validation is never weighted.
    """
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    compile_classifier(model, config, steps_per_epoch)
    num_classes = model.output_shape[-1]
    arrays = (train.images, one_hot(train.labels, num_classes)) + (() if sample_weight is None else (sample_weight.astype("float32"),))
    fitted = fit_epochs(model, EpochBatches(arrays, config.batch_size, config.seed), config.epochs, config.seed,
                        validation_data=(validation.images.astype("float32"), one_hot(validation.labels, num_classes)),
                        select_on=config.select_on, patience=config.early_stopping_patience, budget=Budget.of(config))
    return TrainingResult(model=model, history=fitted.history, best_epoch=fitted.best_epoch,
                          images_per_second=len(train) * len(fitted.history) / training_seconds(fitted.history))


@dataclass
class Fitted:
    history: pd.DataFrame  # one row per epoch
    best_epoch: int | None  # 1-based epoch whose weights the model holds; None without select_on
    best: float | None  # the selected metric's value at that epoch


def fit_epochs(model: keras.Model, batches: EpochBatches | TwoStreamBatches, epochs: int, seed: int, *,
               validation_data=None, select_on: str | None = None, patience: int | None = None,
               budget: Budget | None = None, extra: tuple[keras.callbacks.Callback, ...] = (),
               **fit_options) -> Fitted:
    """``model.fit`` over ``batches`` for ``epochs``, with the callbacks of every training stage.

    ``select_on`` (a validation metric, ``val_loss`` minimised, others maximised) keeps the weights of
    the best epoch and stops after ``patience`` epochs without improvement (None: never stops
    early). ``budget`` trains for wall time instead (``TimeBudget``).
    ``extra`` callbacks run before the recorder (the EMA swap must precede the selector).
    """
    recorder = EpochRecorder(epochs, budget_seconds=budget.seconds if budget else None)
    if budget:
        extra = (*extra, TimeBudget(budget, recorder))
    selector = None
    if select_on:
        selector = keras.callbacks.EarlyStopping(monitor=select_on, mode="min" if select_on == "val_loss" else "max",
                                                 restore_best_weights=True, patience=patience or epochs)
    model.fit(feed(batches), validation_data=validation_data, epochs=epochs, shuffle=False, verbose=0,  # batches shuffle
              callbacks=epoch_callbacks(seed, recorder, selector, (batches,), extra), **fit_options)
    if selector is None:
        return Fitted(recorder.history(), None, None)
    return Fitted(recorder.history(), selector.best_epoch + 1, float(selector.best))


def kept_model_summary(classifier: keras.Model, validation: ImageTable, history: pd.DataFrame, best_epoch: int) -> dict[str, Any]:
    """The kept weights' validation accuracy (measured again, in inference mode) and their epoch."""
    return {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_val_accuracy": validation_metrics(classifier, validation, batch_size=INFERENCE_BATCH)["val_accuracy"],
        "parameters": classifier.count_params(),
        "train_seconds": round(training_seconds(history), 2),
    }
