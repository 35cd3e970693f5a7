"""Threat-model geometry: projections (property tests), steps, random init, dual norms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from advjax import geometry

SHAPE = (3, 2, 2, 3)  # batch 3 of 2x2x3 "images": fixed, so every jit compiles once
D = int(np.prod(SHAPE[1:]))
BOUNDS = (0.0, 1.0)
UNBOUNDED = (-np.inf, np.inf)

_project = {
    norm: jax.jit(
        lambda d, x, e, norm=norm: geometry.project(d, x, norm=norm, eps=e, bounds=BOUNDS)
    )
    for norm in geometry.NORMS
}
_project_free = {
    norm: jax.jit(
        lambda d, x, e, norm=norm: geometry.project(d, x, norm=norm, eps=e, bounds=UNBOUNDED)
    )
    for norm in geometry.NORMS
}
_lp_norm = {
    norm: jax.jit(lambda v, norm=norm: geometry.lp_norm(v, norm=norm)) for norm in geometry.NORMS
}
_project_l1_ball = jax.jit(geometry.project_l1_ball)

floats = st.floats(-3.0, 3.0, allow_nan=False, width=32)
deltas = hnp.arrays(np.float32, SHAPE, elements=floats)
points = hnp.arrays(np.float32, SHAPE, elements=st.floats(0.0, 1.0, width=32))
radii = hnp.arrays(np.float32, (SHAPE[0],), elements=st.floats(0.0, 4.0, width=32))


def _norm(v, norm):
    return np.asarray(_lp_norm[norm](v))


def _tol(eps):
    return 1e-5 * (1.0 + eps) + 1e-6


@pytest.mark.parametrize("norm", geometry.NORMS)
@settings(max_examples=40, deadline=None)
@given(delta=deltas, x=points, eps=radii)
def test_projection_feasible_idempotent_and_fixes_feasible_points(norm, delta, x, eps):
    p = np.asarray(_project[norm](delta, x, eps))
    assert np.all(_norm(p, norm) <= eps + _tol(eps))
    assert np.all(x + p >= BOUNDS[0] - 1e-6) and np.all(x + p <= BOUNDS[1] + 1e-6)
    again = np.asarray(_project[norm](p, x, eps))
    np.testing.assert_allclose(again, p, atol=2e-5)
    # A point strictly inside both sets is its own projection.
    inner = 0.5 * p
    np.testing.assert_allclose(np.asarray(_project[norm](inner, x, eps)), inner, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(delta=deltas, x=points, eps=radii)
def test_linf_matches_closed_form(delta, x, eps):
    e = eps[:, None, None, None]
    expected = np.clip(delta, np.maximum(-e, -x), np.minimum(e, 1.0 - x))
    np.testing.assert_allclose(np.asarray(_project["linf"](delta, x, eps)), expected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(delta=deltas, x=points, eps=radii)
def test_l2_ball_matches_closed_form(delta, x, eps):
    n = np.sqrt(np.sum(delta.reshape(SHAPE[0], -1).astype(np.float64) ** 2, axis=1))
    scale = np.minimum(1.0, eps / np.maximum(n, 1e-12))
    expected = delta * scale[:, None, None, None]
    got = np.asarray(_project_free["l2"](delta, x, eps))
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=2e-5)


def _l1_box_reference(v, lo, hi, eps):
    """Projection onto {||d||_1 <= eps, lo <= d <= hi} by float64 bisection on the multiplier."""
    v, lo, hi = (np.asarray(a, np.float64).ravel() for a in (v, lo, hi))

    def d_of(lam):
        return np.clip(np.sign(v) * np.maximum(np.abs(v) - lam, 0.0), lo, hi)

    if np.abs(d_of(0.0)).sum() <= eps:
        return d_of(0.0)
    a, b = 0.0, np.abs(v).max()
    for _ in range(200):
        m = 0.5 * (a + b)
        if np.abs(d_of(m)).sum() > eps:
            a = m
        else:
            b = m
    return d_of(b)


@settings(max_examples=40, deadline=None)
@given(delta=deltas, x=points, eps=radii)
def test_l1_box_projection_matches_bisection_reference(delta, x, eps):
    got = np.asarray(_project["l1"](delta, x, eps))
    for b in range(SHAPE[0]):
        ref = _l1_box_reference(delta[b], -x[b], 1.0 - x[b], float(eps[b]))
        np.testing.assert_allclose(got[b].ravel(), ref, atol=3e-5)


@settings(max_examples=40, deadline=None)
@given(delta=deltas, eps=radii)
def test_l1_box_without_box_is_the_sort_based_ball_projection(delta, eps):
    x = np.zeros(SHAPE, np.float32)
    free = np.asarray(_project_free["l1"](delta, x, eps))
    duchi = np.asarray(_project_l1_ball(delta, eps))
    np.testing.assert_allclose(free, duchi, atol=2e-5)
    for b in range(SHAPE[0]):
        ref = _l1_box_reference(delta[b], -np.inf * np.ones(D), np.inf * np.ones(D), float(eps[b]))
        np.testing.assert_allclose(duchi[b].ravel(), ref, atol=3e-5)


def test_l1_box_projection_beats_clip_after_ball():
    # Clipping the l1-ball projection into the box wastes budget; the exact projection
    # of the intersection is closer to v (it is the minimiser).
    v = np.asarray([[2.0, 0.5, 0.0, 0.0]], np.float32)
    x = np.asarray([[0.9, 0.0, 0.0, 0.0]], np.float32)

    @jax.jit
    def projections(v, x):
        exact = geometry.project(v, x, norm="l1", eps=1.0, bounds=BOUNDS)
        naive = jnp.clip(x + geometry.project_l1_ball(v, 1.0), 0.0, 1.0) - x
        return exact, jnp.sum((exact - v) ** 2), jnp.sum((naive - v) ** 2)

    exact, exact_distance, naive_distance = projections(v, x)
    # Box caps coordinate 0 at 0.1; the remaining 0.9 of budget goes to coordinate 1
    # (at most 0.5 there), so the projection is (0.1, 0.5, 0, 0).
    np.testing.assert_allclose(np.asarray(exact), [[0.1, 0.5, 0.0, 0.0]], atol=1e-6)
    assert float(exact_distance) < float(naive_distance)


@pytest.mark.parametrize("norm", geometry.NORMS)
def test_random_init_inside_and_uniform_radius(norm):
    # Uniform in a d-ball: P(||d|| <= t eps) = t^d, so E||d|| = eps d / (d + 1).
    d = 5
    x = np.zeros((4000, d), np.float32)

    @jax.jit
    def draws(x, keys):  # one compiled program for both draws
        delta = geometry.random_init(keys[0], x, norm=norm, eps=0.5, bounds=UNBOUNDED)
        boxed = geometry.random_init(keys[1], x + 0.9, norm=norm, eps=0.5, bounds=BOUNDS)
        return geometry.lp_norm(delta, norm=norm), jnp.max(x + 0.9 + boxed)

    n, top = draws(x, (jax.random.key(0), jax.random.key(1)))
    n = np.asarray(n)
    assert np.all(n <= 0.5 + 1e-6)
    np.testing.assert_allclose(n.mean(), 0.5 * d / (d + 1), atol=0.01)
    assert float(top) <= 1.0 + 1e-6


@pytest.mark.parametrize("norm", geometry.NORMS)
def test_ascent_direction_has_unit_norm_and_attains_the_dual_norm(norm):

    @jax.jit
    def norms(key):
        g = jax.random.normal(key, (5, 40))
        s = geometry.ascent_direction(g, norm=norm, l1_sparsity=1.0)
        return (
            geometry.lp_norm(s, norm=norm),
            jnp.sum(g * s, axis=1),
            geometry.dual_norm(g, norm=norm),
        )

    unit, attained, dual = norms(jax.random.key(0))
    np.testing.assert_allclose(np.asarray(unit), 1.0, rtol=1e-5)
    # Hoelder: max_{||s||_p <= 1} <g, s> = ||g||_q, attained by the steepest direction.
    np.testing.assert_allclose(np.asarray(attained), np.asarray(dual), rtol=1e-5)


def test_sparse_l1_step_moves_top_fraction_and_skips_blocked_coordinates():
    g = np.asarray([[5.0, -4.0, 3.0, 0.1, -0.2, 0.3, 0.0, 0.05, 1.0, 2.0]], np.float32)
    x_adv = np.asarray([[1.0] + [0.5] * 9], np.float32)
    free, boxed = jax.jit(
        lambda g, x_adv: (
            geometry.ascent_direction(g, norm="l1", l1_sparsity=0.7),  # top 3 coordinates
            geometry.ascent_direction(g, norm="l1", l1_sparsity=0.7, x_adv=x_adv, bounds=BOUNDS),
        )
    )(g, x_adv)
    s = np.asarray(free)
    np.testing.assert_allclose(s[0, :3], [1 / 3, -1 / 3, 1 / 3], rtol=1e-6)
    assert float(np.abs(s[0, 3:]).sum()) == 0.0
    # Coordinate 0 sits at the upper bound with an outward gradient: it is skipped.
    s = np.asarray(boxed)
    assert float(s[0, 0]) == 0.0 and float(s[0, 9]) > 0


def test_dual_pairs_and_bad_norm_message():
    assert [geometry.dual_of(n) for n in ("linf", "l2", "l1")] == ["l1", "l2", "linf"]
    with pytest.raises(ValueError, match="config key 'norm'.*'l3'"):
        geometry.check_norm("l3")
