"""Tests of the game-theoretic interaction analysis against closed forms and enumeration."""

from __future__ import annotations

import functools
import itertools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax.analysis import interactions as itx
from advjax.attacks import equal_strength
from tests.helpers import printed_json

# ---------------------------------------------------------------------------------------------
# Synthetic games
# ---------------------------------------------------------------------------------------------


def additive_pairwise_game(n, a, b, pair):
    """v(S) = sum_i a_i [i in S] + b [i in S][j in S]."""
    i, j = pair

    def v(mask):
        return jnp.sum(a * mask) + b * mask[i] * mask[j]

    return itx.function_game(v, n)


def threshold_game(n, k):
    """v(S) = [|S| >= k]."""
    return itx.function_game(lambda mask: (jnp.sum(mask) >= k).astype(jnp.float32), n)


def random_table(n, seed):
    return np.random.default_rng(seed).normal(size=2**n)


def smooth_game_table(n, seed):
    """A nonlinear game with interactions of every order: v(S) = tanh(w . 1_S + c) + q(S)."""
    rng = np.random.default_rng(seed)
    w, q = rng.normal(size=n), rng.normal(size=(n, n)) / n
    masks = itx.all_masks(n).astype(np.float64)
    return np.tanh(masks @ w - 1.0) + np.einsum("si,ij,sj->s", masks, q, masks)


# ---------------------------------------------------------------------------------------------
# Known-answer games
# ---------------------------------------------------------------------------------------------


def test_additive_pairwise_game_exact_and_sampled():
    n, b, pair = 7, 1.75, (2, 5)
    a = jnp.asarray(np.random.default_rng(0).normal(size=n), jnp.float32)
    game = additive_pairwise_game(n, a, b, pair)
    inter = itx.interactions_exact(itx.value_table(game))
    expected = np.zeros((n, n, n - 1))
    expected[2, 5] = expected[5, 2] = b
    np.testing.assert_allclose(inter, expected, atol=1e-5)

    pairs = itx.all_pairs(n)
    est = itx.interactions_sampled(game, pairs, np.arange(n - 1), jax.random.key(0), num_contexts=5)
    coupled = np.array([tuple(p) == pair for p in pairs])
    np.testing.assert_allclose(np.asarray(est.mean)[coupled], b, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est.mean)[~coupled], 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est.stderr), 0.0, atol=1e-5)


@pytest.mark.parametrize("k", [2, 4, 6])
def test_threshold_game_interactions_are_order_localised(k):
    n = 6
    game = threshold_game(n, k)
    inter = itx.interactions_exact(itx.value_table(game))
    expected = np.zeros(n - 1)
    expected[k - 2] = 1.0
    if k - 1 <= n - 2:
        expected[k - 1] = -1.0
    for i, j in itx.all_pairs(n):
        np.testing.assert_allclose(inter[i, j], expected, atol=1e-12)

    est = itx.interactions_sampled(
        game, itx.all_pairs(n)[:4], np.arange(n - 1), jax.random.key(1), num_contexts=3
    )
    np.testing.assert_allclose(np.asarray(est.mean), np.broadcast_to(expected, (4, n - 1)))


def test_exact_interactions_match_definition_by_brute_force():
    n, table = 5, random_table(5, 3)
    inter = itx.interactions_exact(table)
    code = lambda s: sum(1 << p for p in s)
    for i, j in [(0, 1), (1, 4), (2, 3)]:
        others = [p for p in range(n) if p not in (i, j)]
        for m in range(n - 1):
            deltas = [
                table[code(s) | 1 << i | 1 << j]
                - table[code(s) | 1 << i]
                - table[code(s) | 1 << j]
                + table[code(s)]
                for s in itertools.combinations(others, m)
            ]
            assert inter[i, j, m] == pytest.approx(np.mean(deltas), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Efficiency, decomposition, Shapley interaction index
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 6, 10])
def test_efficiency_and_decomposition_identity(n):
    table = random_table(n, n)
    phi = itx.shapley_values_exact(table)
    assert phi.sum() == pytest.approx(table[-1] - table[0], abs=1e-10)

    dec = itx.decomposition_exact(table)
    assert abs(dec.residual) < 1e-10
    assert dec.total == pytest.approx(dec.mu.sum() + dec.order_terms.sum(), abs=1e-10)
    # Per player: phi_i = mu_i + sum_{j != i} sum_m w^(m) I^(m)(i, j).
    inter = itx.interactions_exact(table)
    w = itx.order_weights(np.arange(n - 1), n)
    np.testing.assert_allclose(phi, dec.mu + (inter * w).sum(axis=(1, 2)), atol=1e-10)
    if n >= 3:
        # The identity needs ordered pairs: counting each unordered pair once breaks it.
        half = dec.mu.sum() + dec.order_terms.sum() / 2
        assert abs(dec.total - half) > 1e-6


@pytest.mark.parametrize("n", [3, 5, 8])
def test_shapley_interaction_index_is_mean_over_orders(n):
    table = random_table(n, 10 + n)
    sii = itx.shapley_interaction_exact(table)
    inter = itx.interactions_exact(table)
    np.testing.assert_allclose(sii, inter.mean(axis=-1), atol=1e-12)


def test_shapley_values_of_closed_form_game():
    # v(S) = sum a_i [i in S] + b [i in S][j in S]: phi_i = a_i + b/2 for i, j in the pair.
    n, b = 6, 3.0
    a = np.arange(n, dtype=np.float32)
    phi = itx.shapley_values_exact(itx.value_table(additive_pairwise_game(n, a, b, (0, 3))))
    np.testing.assert_allclose(phi, a + np.array([1.5, 0, 0, 1.5, 0, 0]), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Sampling estimators against enumeration (n = 8)
# ---------------------------------------------------------------------------------------------


def _z_scores(est, se, exact):
    est, se, exact = (np.asarray(a, np.float64).ravel() for a in (est, se, exact))
    zero = se < 1e-7  # orders 0 and n-2 have one context only: the estimate is exact
    np.testing.assert_allclose(est[zero], exact[zero], atol=1e-5)
    return (est[~zero] - exact[~zero]) / se[~zero]


def test_sampled_interactions_agree_with_enumeration():
    n = 8
    table = smooth_game_table(n, 0)
    game = itx.table_game(table.astype(np.float32), chunk_size=96)
    exact = itx.interactions_exact(table)
    pairs = itx.all_pairs(n)
    est = itx.interactions_sampled(
        game, pairs, np.arange(n - 1), jax.random.key(2), num_contexts=64
    )
    z = _z_scores(est.mean, est.stderr, exact[pairs[:, 0], pairs[:, 1]])
    assert np.mean(np.abs(z) <= 3) >= 0.97
    assert 0.6 < np.mean(z**2) < 1.5  # standard errors are calibrated


def test_squared_mean_unbiased_is_the_mean_over_distinct_pairs():
    x = np.random.default_rng(0).normal(size=(3, 5))
    brute = np.array(
        [np.mean([r[a] * r[b] for a, b in itertools.permutations(range(5), 2)]) for r in x]
    )
    np.testing.assert_allclose(itx.squared_mean_unbiased(x), brute, rtol=1e-12)
    np.testing.assert_allclose(
        itx.split_half_product(x[:, :4]), x[:, :2].mean(1) * x[:, 2:4].mean(1)
    )
    with pytest.raises(ValueError, match="2 samples"):
        itx.squared_mean_unbiased(x[:, :1])


def test_attack_change_estimator_is_unbiased_against_enumeration():
    """On shared contexts, the noise-corrected squared change averages to the exact
    (I(x) - I(x_adv))^2 of enumeration, and the plain squared mean is biased upwards by
    exactly Var_S[Delta v(x) - Delta v(x_adv)] / C."""
    n, c, reps = 7, 4, 1500
    t_clean, t_adv = smooth_game_table(n, 3), smooth_game_table(n, 4)
    pairs = np.array([[0, 1], [2, 5]], np.int32)
    orders = np.array([1, 2, 3, 4])
    key = jax.random.key(7)
    deltas = [
        np.asarray(
            itx.interaction_deltas(
                itx.table_game(t.astype(np.float32), chunk_size=512),
                pairs, orders, key, num_contexts=c * reps,
            ),
            np.float64,
        ).reshape(len(pairs), len(orders), reps, c)
        for t in (t_clean, t_adv)
    ]  # fmt: skip
    diff = deltas[0] - deltas[1]  # the same contexts S for x and x_adv (same key)
    exact_change, exact_var = np.zeros((2, len(pairs), len(orders)))
    for p, (i, j) in enumerate(pairs):
        rest = [k for k in range(n) if k not in (i, j)]
        for o, m in enumerate(orders):
            d = []
            for s in itertools.combinations(rest, m):
                code = sum(1 << k for k in s)
                ij = code | (1 << i) | (1 << j)
                d.append(sum(sign * (tc[ij] - tc[code | (1 << i)] - tc[code | (1 << j)]
                                     + tc[code])
                             for sign, tc in ((1, t_clean), (-1, t_adv))))  # fmt: skip
            exact_change[p, o], exact_var[p, o] = np.mean(d), np.var(d)
    for estimates, target in (
        (itx.squared_mean_unbiased(diff), exact_change**2),
        (itx.split_half_product(diff), exact_change**2),
        (diff.mean(-1) ** 2, exact_change**2 + exact_var / c),
    ):
        se = estimates.std(-1, ddof=1) / math.sqrt(reps)
        z = (estimates.mean(-1) - target) / se
        assert np.all(np.abs(z) < 4.5), z
    # For pair (0, 1) the bias of the plain estimate is large next to its Monte-Carlo error,
    # so the test tells the two estimators apart.
    assert np.all(exact_var[0] / c > 3 * (diff[0].mean(-1) ** 2).std(-1) / math.sqrt(reps))


def test_sampled_shapley_values_and_index_agree_with_enumeration():
    n = 8
    table = smooth_game_table(n, 1)
    game = itx.table_game(table.astype(np.float32), chunk_size=100)
    phi, se = itx.shapley_values_sampled(game, jax.random.key(3), num_permutations=400)
    assert np.all(np.abs(phi - itx.shapley_values_exact(table)) <= 3 * se)
    assert float(phi.sum()) == pytest.approx(table[-1] - table[0], abs=1e-4)  # exact efficiency

    pairs = itx.all_pairs(n)[::3]
    sii, sii_se = itx.shapley_interaction_sampled(game, pairs, jax.random.key(4), num_contexts=48)
    exact = itx.shapley_interaction_exact(table)[pairs[:, 0], pairs[:, 1]]
    assert np.all(np.abs(np.asarray(sii) - exact) <= 3 * np.asarray(sii_se))


def test_chunking_does_not_change_values():
    n = 6
    table = random_table(n, 7).astype(np.float32)
    masks = jnp.asarray(itx.all_masks(n))
    for chunk in (1, 7, 64, 1000):
        np.testing.assert_array_equal(itx.table_game(table, chunk_size=chunk)(masks), table)
    pairs, orders = itx.all_pairs(n)[:5], np.array([0, 2, 4])
    ref = itx.interaction_deltas(
        itx.table_game(table, chunk_size=4), pairs, orders, jax.random.key(0), num_contexts=3
    )
    big = itx.interaction_deltas(
        itx.table_game(table, chunk_size=400), pairs, orders, jax.random.key(0), num_contexts=3
    )
    np.testing.assert_array_equal(ref, big)


def test_sampled_contexts_have_the_right_size_and_exclude_the_pair():
    keys = jax.random.split(jax.random.key(0), 200)
    masks = np.asarray(jax.jit(jax.vmap(lambda k: itx.sample_context(k, 10, 3, 7, 4)))(keys))
    assert np.all(masks.sum(1) == 4)
    assert not np.any(masks[:, [3, 7]])
    # Uniform over the 8 other players: each is present with probability 4/8.
    assert np.all(np.abs(masks.mean(0)[[0, 1, 2, 4, 5, 6, 8, 9]] - 0.5) < 0.15)


def test_pairs():
    pairs = itx.neighbour_pairs((3, 3))
    # 3x3 grid: 6 horizontal + 6 vertical + 8 diagonal 8-neighbour pairs.
    assert len(pairs) == 20 and len({tuple(p) for p in pairs}) == 20
    rows, cols = np.divmod(pairs, 3)
    assert np.all(np.abs(rows[:, 0] - rows[:, 1]) <= 1) and np.all(
        np.abs(cols[:, 0] - cols[:, 1]) <= 1
    )
    sampled = np.asarray(itx.sample_pairs(jax.random.key(0), (7, 7), 20))
    assert len({tuple(p) for p in sampled}) == 20
    assert {tuple(p) for p in sampled} <= {tuple(p) for p in itx.neighbour_pairs((7, 7))}
    assert len(itx.all_pairs(49)) == 49 * 48 // 2
    np.testing.assert_array_equal(itx.orders_from_ratios([0.1, 0.5, 0.9], 49), [4, 23, 42])


# ---------------------------------------------------------------------------------------------
# Paper quantities
# ---------------------------------------------------------------------------------------------


def test_attacking_utility_by_order_sums_to_the_interaction_part():
    n = 7
    t_clean, t_adv = smooth_game_table(n, 5), smooth_game_table(n, 6)
    pairs = itx.all_pairs(n)
    i_clean = itx.interactions_exact(t_clean)[pairs[:, 0], pairs[:, 1]]
    i_adv = itx.interactions_exact(t_adv)[pairs[:, 0], pairs[:, 1]]
    per_order = itx.attacking_utility_by_order(i_clean, i_adv, np.arange(n - 1), n)
    d_clean, d_adv = itx.decomposition_exact(t_clean), itx.decomposition_exact(t_adv)
    utility = itx.attacking_utility(t_clean[[0, -1]], t_adv[[0, -1]])
    interaction_part = float(utility) - (d_clean.mu.sum() - d_adv.mu.sum())
    assert per_order["mean"].sum() == pytest.approx(interaction_part, abs=1e-10)
    np.testing.assert_allclose(
        per_order["mean"], d_clean.order_terms - d_adv.order_terms, atol=1e-10
    )


def test_interaction_strength_and_bands():
    n, orders = 10, np.array([0, 4, 8])
    inter = np.array([[[1.0, -2.0, 3.0]], [[-3.0, 2.0, -1.0]]])  # [images, pairs, M]
    raw = itx.interaction_strength(inter, orders, n)
    np.testing.assert_allclose(raw["mean"], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(raw["std"], np.std([[1, 2, 3], [3, 2, 1]], axis=0, ddof=1))
    weighted = itx.interaction_strength(inter, orders, n, weighted=True)
    np.testing.assert_allclose(weighted["mean"], 2.0 * np.array([9, 5, 1]) / 90)
    assert itx.order_bands([0.1, 0.3, 0.5, 0.7, 0.9]) == ["low", "low", "middle", "high", "high"]
    assert itx.band_means([1, 2, 3, 4], [0.1, 0.2, 0.5, 0.8]) == {
        "low": 1.5,
        "middle": 3.0,
        "high": 4.0,
    }
    with pytest.raises(ValueError, match="analysis.bands"):
        itx.order_bands([0.5], bands=(0.8, 0.2))


def test_disentanglement_ratio_closed_form():
    # v(S) = [i in S][j in S] (+1 if k in S else -1): Delta v(i, j, S) = +-1 with the sign of
    # [k in S], so I^(m)(i, j) = 2 m / (n - 2) - 1 and the ratio is |2 m / (n - 2) - 1|.
    n, (i, j, k) = 6, (0, 1, 2)
    game = itx.function_game(lambda s: s[i] * s[j] * jnp.where(s[k], 1.0, -1.0), n)
    inter, inter_abs = itx.interactions_exact(itx.value_table(game), return_abs=True)
    ratio = itx.disentanglement_ratio(inter[i, j][None], inter_abs[i, j][None])
    m = np.arange(n - 1)
    np.testing.assert_allclose(ratio, np.abs(2 * m / (n - 2) - 1), atol=1e-6)
    est = itx.interactions_sampled(game, np.array([[i, j]]), m, jax.random.key(0), num_contexts=8)
    np.testing.assert_allclose(np.asarray(est.mean_abs), 1.0)


# ---------------------------------------------------------------------------------------------
# Image games on a tiny model
# ---------------------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def tiny_model():
    x = jax.random.uniform(jax.random.key(0), (4, 12, 12, 2))
    module = TinyCNN()
    variables = jax.jit(module.init)(jax.random.key(1), x)
    return jax.jit(lambda z: module.apply(variables, z, train=False)), x


def test_masked_forward_pass_matches_plain_forward(tiny_model):
    logits_fn, x = tiny_model
    n = 9

    @functools.partial(jax.jit, static_argnums=0)
    def values(baseline):
        game = itx.image_game(logits_fn, x[0], 3, grid=(3, 3), baseline=baseline, chunk_size=2)
        full, empty = game(jnp.stack([jnp.ones(n, bool), jnp.zeros(n, bool)]))
        base = itx.make_baseline(x[0], baseline)
        plain_full = jax.nn.log_softmax(logits_fn(x[:1]))[0, 3]
        plain_empty = jax.nn.log_softmax(logits_fn(base[None]))[0, 3]
        return full, empty, plain_full, plain_empty

    for baseline in ("mean", "zero", "blur"):
        full, empty, plain_full, plain_empty = map(float, values(baseline))
        assert full == pytest.approx(plain_full, abs=1e-5)
        assert empty == pytest.approx(plain_empty, abs=1e-5)


def test_output_options(tiny_model):
    logits_fn, x = tiny_model
    output_values = jax.jit(itx.output_values, static_argnums=(1, 2))
    z = logits_fn(x)
    p = np.asarray(jax.jit(jax.nn.softmax)(z))[:, 1]
    np.testing.assert_allclose(output_values(z, 1, "log_odds"), np.log(p / (1 - p)), rtol=1e-4)
    np.testing.assert_allclose(output_values(z, 1, "log_prob"), np.log(p), rtol=1e-5)
    np.testing.assert_allclose(output_values(z, 1, "logit"), np.asarray(z)[:, 1])
    with pytest.raises(ValueError, match="analysis.output"):
        itx.output_values(z, 1, "prob")


def test_several_outputs_share_the_forward_passes(tiny_model):
    logits_fn, x = tiny_model
    kw = dict(grid=(3, 3), baseline="zero", chunk_size=16)
    both = itx.image_game(logits_fn, x[0], 2, output=("log_prob", "log_odds"), **kw)
    masks = jnp.asarray(itx.all_masks(9)[::7])
    values = np.asarray(both(masks))
    assert values.shape == (len(masks), 2)
    for k, name in enumerate(("log_prob", "log_odds")):
        one = itx.image_game(logits_fn, x[0], 2, output=name, **kw)
        np.testing.assert_allclose(values[:, k], one(masks), rtol=1e-5, atol=1e-6)
    pairs, orders = np.array([[0, 4], [1, 2]], np.int32), np.array([0, 3, 7])
    key = jax.random.key(1)
    deltas = itx.interaction_deltas(both, pairs, orders, key, num_contexts=3)
    assert deltas.shape == (2, 2, 3, 3)
    single = itx.interaction_deltas(
        itx.image_game(logits_fn, x[0], 2, output="log_odds", **kw), pairs, orders, key,
        num_contexts=3,
    )  # fmt: skip
    np.testing.assert_allclose(deltas[1], single, rtol=1e-4, atol=1e-5)


def test_grid_partition_and_baselines():
    cells = itx.grid_cells((28, 28), (7, 7))
    assert np.all(np.bincount(cells.ravel()) == 16)
    assert cells[0, 0] == 0 and cells[4, 0] == 7 and cells[27, 27] == 48
    uneven = itx.grid_cells((10, 10), (3, 3))
    assert set(np.bincount(uneven.ravel())) <= {9, 12, 16}
    x = jax.random.uniform(jax.random.key(0), (8, 8, 3))
    masks = np.eye(4, dtype=bool)  # one present cell per mask on a 2x2 grid
    imgs = np.asarray(
        jax.jit(itx.masked_inputs)(
            x, np.zeros(x.shape, x.dtype), itx.grid_cells((8, 8), (2, 2)), masks
        )
    )
    assert np.all((imgs != 0).any(-1).sum((1, 2)) == 16)
    np.testing.assert_array_equal(imgs[3, 4:, 4:], np.asarray(x)[4:, 4:])
    const = np.full((9, 9, 1), 0.3, np.float32)
    blur = jax.jit(functools.partial(itx.make_baseline, kind="blur", blur_sigma=1.5))
    np.testing.assert_allclose(blur(const), const, atol=1e-6)
    np.testing.assert_allclose(
        itx.make_baseline(x, "mean", channel_mean=[0.1, 0.2, 0.3])[5, 5], [0.1, 0.2, 0.3]
    )
    with pytest.raises(ValueError, match="analysis.baseline"):
        itx.make_baseline(x, "noise")


def test_image_game_identity_and_jit_compiles_once(tiny_model):
    logits_fn, x = tiny_model
    traces = []

    @jax.jit
    def table_of(img, label):
        traces.append(1)
        game = itx.image_game(logits_fn, img, label, grid=(2, 3), chunk_size=16)
        return itx.evaluate(game, jnp.asarray(itx.all_masks(6)))

    for k in range(3):
        dec = itx.decomposition_exact(np.asarray(table_of(x[k], k)))
        assert abs(dec.residual) < 1e-10
    assert len(traces) == 1


# ---------------------------------------------------------------------------------------------
# Equal-strength PGD
# ---------------------------------------------------------------------------------------------


def test_equal_strength_pgd_halves_on_overshoot_closed_form():
    # Two classes, z_0 = -c x_0, z_1 = 0, y = 0: every L-inf step s moves x_0 by s and drops
    # z_0 by c s. From x_0 = 0 with s = 3 and band (8, 8.5]: c = 1 accepts 3, 6, overshoots
    # at 9 (s -> 1.5), accepts 7.5, overshoots at 9 (s -> 0.75), stops at 8.25 after 6 steps.
    # c = 2 accepts 3, overshoots twice (s -> 0.75), accepts 3.75, overshoots, stops at 4.125.
    c = jnp.array([1.0, 2.0])

    def logits_fn(x):
        return jnp.stack([-c * x[:, 0], jnp.zeros(2)], axis=1)

    x = jnp.zeros((2, 3))
    res = equal_strength.equal_strength_pgd(
        logits_fn,
        x,
        jnp.zeros(2, jnp.int32),
        jax.random.key(0),
        eps=100.0,
        step_size=3.0,
        max_steps=50,
        band=(8.0, 8.5),
        init_std=0.0,
        bounds=(-100.0, 100.0),
    )
    x_adv = np.asarray(res.x_adv)
    np.testing.assert_allclose(x_adv[:, 0], [8.25, 4.125])
    np.testing.assert_allclose(x_adv[:, 1:], 0.0)
    np.testing.assert_allclose(res.drop, [8.25, 8.25])
    np.testing.assert_array_equal(res.in_band, [True, True])
    np.testing.assert_array_equal(res.steps, [6, 6])
    np.testing.assert_allclose(res.step_size, [0.75, 0.375])


def test_equal_strength_pgd_on_a_model_respects_band_and_ball(tiny_model):
    logits_fn, x = tiny_model
    y = jnp.argmax(logits_fn(x), axis=-1)
    for norm, eps in (("linf", 0.5), ("l2", 4.0), ("l1", 16.0)):
        res = equal_strength.equal_strength_pgd(
            logits_fn,
            x,
            y,
            jax.random.key(0),
            eps=eps,
            step_size=eps / 8,
            max_steps=200,
            band=(0.3, 0.35),
            norm=norm,
        )
        x_adv, res_drop = np.asarray(res.x_adv), np.asarray(res.drop)
        rows = np.arange(4), np.asarray(y)
        drop = np.asarray(logits_fn(x))[rows] - np.asarray(logits_fn(res.x_adv))[rows]
        np.testing.assert_allclose(drop, res_drop, atol=1e-5)
        assert np.all(np.asarray(res.in_band))
        assert np.all((res_drop > 0.3) & (res_drop <= 0.35))
        delta = (x_adv - np.asarray(x)).reshape(4, -1)
        size = np.linalg.norm(delta, ord={"linf": np.inf, "l2": 2, "l1": 1}[norm], axis=1)
        assert np.all(size <= eps + 1e-5)
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert math.isfinite(float(res_drop.sum()))


# ---------------------------------------------------------------------------------------------
# Notebook (known answers at smoke size; the experiment's stored results, checked again)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_known_answers_and_experiment(run_notebook):
    nb = run_notebook("interactions.ipynb")
    checks = printed_json(nb, "CHECKS")
    # n = 8, k = 5: I^(3) = +1, I^(4) = -1, 0 elsewhere; the coupled pair has b = 0.75.
    np.testing.assert_allclose(checks["threshold_curve"], [0, 0, 0, 1, -1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(checks["pairwise_coupled"], 0.75, atol=1e-6)
    for key in (
        "decomposition_residual",
        "shapley_efficiency_residual",
        "sii_minus_mean_over_orders",
    ):
        assert abs(checks[key]) < 1e-10
    noise = printed_json(nb, "NOISE")
    # The noise-corrected squared change agrees with enumeration; the plain one lies above.
    assert np.all(np.abs(noise["z_unbiased"]) < 5)
    assert np.all(np.asarray(noise["naive_minus_exact"]) > 0)
    result = printed_json(nb, "NOTEBOOK_RESULT")
    assert [k for k, _ in result["rows"]][:2] == [
        "attack_high_order_standard",
        "attack_high_order_robust",
    ]
    lo, hi = result["band"]
    for run in result["per_seed"].values():
        assert run["num_images"] >= 2
        for drop in run["drop_mean"].values():
            assert lo < drop <= hi  # every kept adversarial example lies in the band
        assert run["exact_residual"] < 1e-9  # v(N) - v(empty) decomposition on the model's game
    assert result["figures"] and all(os.path.getsize(p) > 0 for p in result["figures"])


def test_experiment_helpers():
    from advjax.experiments import interactions as experiment

    labels = np.array([0, 0, 0, 1, 1, 2, 0, 2])
    # Round-robin over classes in pool order: first of each class, then second of each, ...
    np.testing.assert_array_equal(experiment.balanced_first(np.arange(8), labels, 4), [0, 1, 3, 5])
    overrides = ml_collections.ConfigDict({"train": {"num_epochs": 0.5}})
    config = experiment._model_config("configs/mnist_standard.py:smoke", overrides)
    assert config.train.num_epochs == 0.5 and config.model.name == "small_cnn"
    with pytest.raises(ValueError, match="lerning_rate"):
        experiment._model_config(
            "configs/mnist_standard.py",
            ml_collections.ConfigDict({"train": {"optimizer": {"lerning_rate": 1.0}}}),
        )


def test_interaction_estimates_split_across_processes_equal_one_process(tiny_model, monkeypatch):
    """Each process estimates every P-th image; the gathered records equal one process's."""
    from advjax import distributed
    from advjax.experiments import interactions as experiment

    fn, x = tiny_model
    x = np.asarray(x)
    y = np.asarray(jnp.argmax(fn(jnp.asarray(x)), -1))
    x_adv = {"m": np.clip(x + 0.05, 0.0, 1.0)}
    a = ml_collections.ConfigDict(
        {"grid": (3, 3), "ratios": [0.2, 0.8], "num_pairs": 2, "pairs": "neighbour",
         "num_contexts": 2, "label": "true", "exact_grid": (2, 2), "baseline": "mean",
         "blur_sigma": 1.0, "outputs": ("log_prob", "log_odds"), "chunk_size": 64}
    )  # fmt: skip
    cm = jnp.asarray(x.mean(axis=(0, 1, 2)))
    key = jax.random.key(5)

    def run(pid, count, gathered):
        monkeypatch.setattr(distributed, "process_index", lambda: pid)
        monkeypatch.setattr(distributed, "process_count", lambda: count)
        monkeypatch.setattr(distributed, "allgather_objects", gathered)
        return experiment.compute_interactions({"m": fn}, x, y, x_adv, key, a, channel_mean=cm)

    single = run(0, 1, lambda obj: [obj])
    other = []

    class Captured(Exception):
        pass

    def capture(obj):  # process 1's share, captured at the gather
        other.append(obj)
        raise Captured

    with pytest.raises(Captured):
        run(1, 2, capture)
    assert sorted(other[0]) == [1, 3]
    split = run(0, 2, lambda obj: [obj, other[0]])
    for output in ("log_prob", "log_odds"):
        for cond in ("clean", "adv"):
            got, want = split[output]["m"][cond], single[output]["m"][cond]
            for field in ("deltas", "ends"):
                np.testing.assert_array_equal(got[field], want[field])
            assert len(got["exact"]) == len(x)
            assert got["deltas"].shape == (len(x), 2, 2, 2)
