"""The keras.ops objectives against NumPy references, on every backend installed."""

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

from stages.lib import losses


def nt_xent_reference(z1, z2, temperature):
    """SimCLR's loss written out with loops, straight from the paper's definition."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        scores = np.array([z[i] @ z[k] / temperature for k in others])
        total += -(z[i] @ z[partner] / temperature - np.log(np.exp(scores).sum()))
    return total / (2 * n)


def test_nt_xent_matches_the_reference_on_a_4x4_case():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(4, 4)).astype("float32"), rng.normal(size=(4, 4)).astype("float32")
    for temperature in (0.1, 0.5, 1.0):
        value = float(ops.convert_to_numpy(losses.nt_xent(z1, z2, temperature)))
        assert value == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_known_value_and_bounds():
    # orthogonal images, identical views: each row's partner scores 1/t, the 2N - 2 others 0
    z = np.eye(4, dtype="float32")
    t = 0.5
    expected = -(1 / t - math.log(math.exp(1 / t) + 6))
    assert float(ops.convert_to_numpy(losses.nt_xent(z, z, t))) == pytest.approx(expected, rel=1e-6)
    # all embeddings alike: chance, log(2N - 1)
    same = np.ones((4, 3), "float32")
    assert float(ops.convert_to_numpy(losses.nt_xent(same, same, t))) == pytest.approx(math.log(7), rel=1e-6)


def test_identical_views_score_lower_than_unrelated_ones():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(16, 8)).astype("float32")
    matched = float(ops.convert_to_numpy(losses.nt_xent(z1, z1, 0.2)))
    unrelated = float(ops.convert_to_numpy(losses.nt_xent(z1, rng.normal(size=(16, 8)).astype("float32"), 0.2)))
    assert matched < unrelated
    assert float(ops.convert_to_numpy(losses.positive_pair_accuracy(z1, z1))) == 1.0


def test_psnr_of_known_errors():
    assert float(ops.convert_to_numpy(losses.psnr(4.0))) == pytest.approx(0.0, abs=1e-6)
    assert float(ops.convert_to_numpy(losses.psnr(0.04))) == pytest.approx(20.0, rel=1e-6)


def test_joint_loss_weights_and_range():
    assert losses.joint_loss(2.0, 4.0, 0.5) == pytest.approx(0.5 * 2.0 + 1.5 * 4.0)
    assert losses.joint_loss(2.0, 4.0, -1.0) == pytest.approx(4.0)
    for a in (-1.01, 1.5):
        with pytest.raises(ValueError, match=r"outside \[-1, 1\]"):
            losses.joint_loss(1.0, 1.0, a)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_nt_xent_on_jax_matches_the_reference():
    code = ("import numpy as np; from keras import ops; from stages.lib import losses; "
            "r = np.random.default_rng(0); z1, z2 = r.normal(size=(4, 4)).astype('float32'), "
            "r.normal(size=(4, 4)).astype('float32'); print(float(ops.convert_to_numpy(losses.nt_xent(z1, z2, 0.5))))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "jax"},
                         capture_output=True, text=True, check=True).stdout
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(4, 4)).astype("float32"), rng.normal(size=(4, 4)).astype("float32")
    assert float(out.split()[-1]) == pytest.approx(nt_xent_reference(z1, z2, 0.5), rel=1e-5)
