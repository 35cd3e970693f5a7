"""FAB-T on linear models, where the minimal adversarial perturbation has a closed form.

For logits ``z = W x + b`` with two classes and x far enough inside the box, the
smallest l_p perturbation that flips the label has norm
``r = (z_y - z_t) / ||w_y - w_t||_q`` with q the dual exponent of p (Croce & Hein 2020,
Eq. 4); FAB's first projection lands exactly on that boundary point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.fab import fab_targeted, fab_targeted_minimal

DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


def _linear_problem(norm: str, n: int = 8, d: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, d)).astype(np.float32)
    x = rng.uniform(0.4, 0.6, (n, d)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.int32)
    radius = rng.uniform(0.02, 0.08, n).astype(np.float32)
    dual = np.linalg.norm(w[0] - w[1], ord=DUAL[norm])
    # A per-example bias makes z_y - z_t = radius * ||w_y - w_t||_q exactly.
    gap = (x @ (w[0] - w[1])).astype(np.float64)
    sign = np.where(y == 0, 1.0, -1.0)
    bias = jnp.asarray((sign * radius * dual - gap).astype(np.float32))

    def model(inputs):
        z = inputs @ jnp.asarray(w).T
        return z + jnp.stack([bias, jnp.zeros_like(bias)], axis=-1)

    return model, x, y, radius


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_t_finds_the_minimal_perturbation_of_a_linear_model(norm):
    model, x, y, radius = _linear_problem(norm)
    assert np.all(np.argmax(np.asarray(model(jnp.asarray(x))), axis=-1) == y)
    x_adv, found = fab_targeted_minimal(
        model, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), norm=norm
    )
    x_adv, found = np.asarray(x_adv), np.asarray(found)
    assert x_adv.shape == x.shape
    assert np.all(np.argmax(np.asarray(model(jnp.asarray(x_adv))), axis=-1) != y)
    ord_p = {"linf": np.inf, "l2": 2, "l1": 1}[norm]
    norms = np.linalg.norm(x_adv - x, ord=ord_p, axis=1)
    np.testing.assert_allclose(found, norms, rtol=1e-5)
    # Never below the closed-form minimum, and within 1e-3 of it.
    assert np.all(norms >= radius * (1 - 1e-4))
    np.testing.assert_array_less(norms - radius, 1e-3)


def test_fab_t_keeps_only_perturbations_within_eps():
    model, x, y, radius = _linear_problem("l2", seed=1)
    eps = 0.05
    x_adv = np.asarray(
        fab_targeted(model, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), norm="l2", eps=eps)
    )
    flipped = np.argmax(np.asarray(model(jnp.asarray(x_adv))), axis=-1) != y
    # Points whose minimal perturbation exceeds eps stay clean; the others flip
    # (FAB's result is within 1% of the minimum, so leave a margin around eps).
    assert not flipped[radius > eps].any()
    assert np.array_equal(x_adv[radius > eps], x[radius > eps])
    assert flipped[radius < 0.98 * eps].all()
    assert np.all(np.linalg.norm(x_adv - x, axis=1) <= eps + 1e-6)


def _box_problem(seed: int, n: int = 12):
    """A hyperplane that the box constrains: x near the box's corner, large |c|."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, n).astype(np.float32)
    x[:3] = [0.99, 0.01, 0.995]
    w = rng.normal(size=n).astype(np.float32)
    c = np.float32(0.6 * np.sum(np.abs(w) * np.where(w > 0, 1 - x, x)))
    return x, w, c, -x, 1 - x


@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_constrained_hyperplane_projection_matches_a_linear_program(norm, seed):
    from scipy.optimize import linprog

    from advjax.attacks.fab import _PROJECTIONS

    x, w, c, lower, upper = _box_problem(seed)
    n = x.size
    d = np.asarray(_PROJECTIONS[norm](*(jnp.asarray(a) for a in (x, w, c, lower, upper))))
    assert np.all(d >= lower - 1e-6) and np.all(d <= upper + 1e-6)
    np.testing.assert_allclose(np.dot(w, d), c, rtol=1e-4)
    # Reference: min ||d||_p s.t. <w, d> = c, lower <= d <= upper, as an LP over (d, t).
    eye = np.eye(n)
    if norm == "l1":
        cost = np.concatenate([np.zeros(n), np.ones(n)])
        a_ub = np.block([[eye, -eye], [-eye, -eye]])
        t_bounds = [(0, None)] * n
    else:
        cost = np.concatenate([np.zeros(n), [1.0]])
        a_ub = np.block([[eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))]])
        t_bounds = [(0, None)]
    result = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(2 * n),
        A_eq=np.concatenate([w, np.zeros(cost.size - n)])[None],
        b_eq=[c],
        bounds=list(zip(lower, upper, strict=True)) + t_bounds,
    )
    assert result.status == 0
    ord_p = 1 if norm == "l1" else np.inf
    np.testing.assert_allclose(np.linalg.norm(d, ord=ord_p), result.fun, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_constrained_l2_projection_satisfies_its_optimality_conditions(seed):
    from advjax.attacks.fab import _project_l2

    x, w, c, lower, upper = _box_problem(seed)
    d = np.asarray(_project_l2(*(jnp.asarray(a) for a in (x, w, c, lower, upper))))
    assert np.all(d >= lower - 1e-6) and np.all(d <= upper + 1e-6)
    np.testing.assert_allclose(np.dot(w, d), c, rtol=1e-4)
    # KKT: d = clip(mu * w, lower, upper) for one mu > 0, and some coordinates saturate.
    free = (d > lower + 1e-5) & (d < upper - 1e-5) & (np.abs(w) > 1e-3)
    ratios = d[free] / w[free]
    assert free.sum() >= 2 and (~free).any()
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=1e-4)
    mu = ratios.mean()
    np.testing.assert_allclose(d, np.clip(mu * w, lower, upper), atol=1e-5)


def test_fab_t_restarts_never_worse_and_deterministic():
    model, x, y, radius = _linear_problem("linf", seed=2)
    args = (model, jnp.asarray(x), jnp.asarray(y), jax.random.key(3))
    _, single = fab_targeted_minimal(*args, norm="linf", eps=0.1)
    _, several = fab_targeted_minimal(*args, norm="linf", eps=0.1, num_restarts=3)
    _, again = fab_targeted_minimal(*args, norm="linf", eps=0.1, num_restarts=3)
    several = np.asarray(several)
    np.testing.assert_array_equal(several, np.asarray(again))
    # The first restart repeats the single run, but inside another compiled program:
    # XLA may order its float sums differently, so "never worse" holds up to a few ulps.
    assert np.all(several <= np.asarray(single) * (1 + 16 * np.finfo(np.float32).eps))
    assert np.all(several >= radius * (1 - 1e-4))
    with pytest.raises(ValueError, match="need eps"):
        fab_targeted_minimal(*args, norm="linf", num_restarts=2)
