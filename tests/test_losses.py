"""Losses on logits: closed-form values, invariances and targeted forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import losses

Z = jnp.asarray([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, -1.0, 1.5]])
Y = jnp.asarray([0, 0])


def test_cross_entropy_is_negative_log_softmax():
    z = np.asarray(Z, np.float64)
    expected = -(z[np.arange(2), [0, 0]] - np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(np.asarray(losses.cross_entropy(Z, Y)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(losses.cross_entropy_targeted(Z, Y)), -expected, rtol=1e-6
    )


def test_margin_sign_marks_misclassification():
    m = np.asarray(losses.margin(Z, Y))
    np.testing.assert_allclose(m, [1.0 - 3.0, 2.0 - 0.5])
    assert (m > 0).tolist() == (np.asarray(jnp.argmax(Z, 1)) != np.asarray(Y)).tolist()
    np.testing.assert_allclose(
        np.asarray(losses.margin_targeted(Z, jnp.asarray([1, 1]))), [1.0 - 3.0, 2.0 - 1.5]
    )


def test_dlr_closed_form_and_invariance():
    # Row 0: sorted logits 3, 1, 0, -1; y = 0: -(3 - 1) / (3 - 0).
    # Row 1: sorted 2, 1.5, 0.5, -1; y = 0: -(0.5 - 2) / (2 - 0.5).
    np.testing.assert_allclose(np.asarray(losses.dlr(Z, Y)), [-2 / 3, 1.0], rtol=1e-6)
    shifted = 2.5 * Z + 7.0
    np.testing.assert_allclose(
        np.asarray(losses.dlr(shifted, Y)), np.asarray(losses.dlr(Z, Y)), rtol=1e-5
    )


def test_targeted_dlr_closed_form():
    t = jnp.asarray([2, 3])
    # Row 0: -(3 - 0) / (3 - (0 + -1) / 2); row 1: -(0.5 - 1.5) / (2 - (0.5 + -1) / 2).
    expected = [-3.0 / 3.5, 1.0 / 2.25]
    np.testing.assert_allclose(np.asarray(losses.dlr_targeted(Z, Y, t)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(losses.dlr_targeted(0.3 * Z - 4.0, Y, t)), expected, rtol=1e-5
    )


def test_kl_divergence_closed_form():
    p = jnp.asarray([[0.0, np.log(3.0)]])  # probabilities (1/4, 3/4)
    q = jnp.asarray([[0.0, 0.0]])  # (1/2, 1/2)
    expected = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    np.testing.assert_allclose(float(losses.kl_divergence(p, q)[0]), expected, rtol=1e-5)
    assert float(losses.kl_divergence(Z, Z).max()) == pytest.approx(0.0, abs=1e-6)
    r = jax.random.normal(jax.random.key(0), (50, 6))
    assert float(losses.kl_divergence(r, r[::-1]).min()) >= -1e-6


def test_attack_loss_selection_and_validation():
    np.testing.assert_allclose(
        np.asarray(losses.attack_loss("dlr", Z, Y)), np.asarray(losses.dlr(Z, Y))
    )
    t = jnp.asarray([2, 3])
    np.testing.assert_allclose(
        np.asarray(losses.attack_loss("dlr", Z, Y, target=t)),
        np.asarray(losses.dlr_targeted(Z, Y, t)),
    )
    kl = losses.attack_loss("kl", Z[::-1], Y, clean_logits=Z)
    np.testing.assert_allclose(np.asarray(kl), np.asarray(losses.kl_divergence(Z, Z[::-1])))
    with pytest.raises(ValueError, match="config key 'loss'.*'kl' for a targeted"):
        losses.attack_loss("kl", Z, Y, target=t)
    with pytest.raises(ValueError, match="'hinge'"):
        losses.attack_loss("hinge", Z, Y)
