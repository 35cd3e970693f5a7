"""Known-answer tests for the mutual-information estimators (advjax.analysis.mutual_information)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.analysis import mutual_information as mi
from tests.helpers import CompileCounter

RHOS = (0.0, 0.5, 0.9)

# The estimators compiled as whole programs, once per shape (rather than op by op).
plugin_mi_table = jax.jit(mi.plugin_mi_table)
plugin_mi = jax.jit(mi.plugin_mi, static_argnames=("num_a", "num_b"))
gaussian_mi_from_covariance = jax.jit(mi.gaussian_mi_from_covariance, static_argnums=1)
gaussian_mi = jax.jit(mi.gaussian_mi, static_argnames="chunk_size")


def gaussian_truth(rho: float) -> float:
    return -0.5 * math.log(1.0 - rho**2)


def bivariate(rho: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((2, n))
    x = u
    z = rho * u + math.sqrt(1.0 - rho**2) * v
    return x.astype(np.float32)[:, None], z.astype(np.float32)[:, None]


# ------------------------------------------------------------------------------ plug-in


def test_plugin_exact_on_tables():
    # Independent table: MI 0 exactly.
    pa, pb = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.4])
    assert abs(float(plugin_mi_table(np.outer(pa, pb)))) < 1e-7
    # Uniform diagonal (Y = X, K values): MI = log K.
    assert float(plugin_mi_table(np.eye(5) / 5)) == pytest.approx(math.log(5), abs=1e-6)
    # Binary symmetric channel with flip e and uniform input: log 2 - H_b(e).
    e = 0.1
    table = 0.5 * np.array([[1 - e, e], [e, 1 - e]])
    h_b = -(e * math.log(e) + (1 - e) * math.log(1 - e))
    assert float(plugin_mi_table(table)) == pytest.approx(math.log(2) - h_b, abs=1e-6)
    # Counts are normalised; zero cells contribute 0 log 0 = 0.
    counts = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 2.0]])
    p = counts / counts.sum()
    brute = sum(
        p[i, j] * math.log(p[i, j] / (p[i].sum() * p[:, j].sum()))
        for i in range(2)
        for j in range(3)
        if p[i, j] > 0
    )
    assert float(plugin_mi_table(counts)) == pytest.approx(brute, abs=1e-6)


def test_plugin_from_samples_is_empirical_table_mi():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 1000)
    b = (a + rng.integers(0, 2, 1000)) % 3
    table = np.zeros((4, 3))
    np.add.at(table, (a, b), 1)
    assert float(plugin_mi(a, b, num_a=4, num_b=3)) == pytest.approx(
        float(plugin_mi_table(table)), abs=1e-6
    )


# ------------------------------------------------------------------------------ Gaussian


@pytest.mark.parametrize("rho", RHOS)
def test_gaussian_estimator(rho):
    cov = np.array([[1.0, rho], [rho, 1.0]])
    assert float(gaussian_mi_from_covariance(cov, 1)) == pytest.approx(
        gaussian_truth(rho), abs=1e-6
    )
    x, z = bivariate(rho, 20000, seed=1)
    # Sampling error of the correlation is ~ (1 - rho^2) / sqrt(n); chunking must not matter.
    est = float(gaussian_mi(x, z, chunk_size=777))
    assert est == pytest.approx(gaussian_truth(rho), abs=0.01)
    assert est == pytest.approx(float(gaussian_mi(x, z, chunk_size=20000)), rel=1e-4, abs=1e-6)


def test_gaussian_multivariate_block():
    # X in R^2, Z in R^1 with known joint covariance; compare with the determinant formula.
    cov = np.array([[2.0, 0.3, 0.8], [0.3, 1.0, 0.4], [0.8, 0.4, 1.5]])
    det = np.linalg.det
    truth = 0.5 * math.log(det(cov[:2, :2]) * cov[2, 2] / det(cov))
    assert float(gaussian_mi_from_covariance(cov, 2)) == pytest.approx(truth, abs=1e-6)


# ------------------------------------------------------------------------------ KSG


def ksg_brute_force(x: np.ndarray, z: np.ndarray, k: int) -> float:
    """KSG estimator 1 (Kraskov et al. 2004, eq. 8) over all pairs with numpy.

    Marginal counts take the samples within nextafter(eps_i, 0): strictly closer than
    eps_i, and exact duplicates when eps_i = 0 (scikit-learn's convention).
    """
    from scipy.special import digamma

    n = len(x)
    dx = np.abs(x[:, None, :] - x[None, :, :]).max(-1)
    dz = np.abs(z[:, None, :] - z[None, :, :]).max(-1)
    np.fill_diagonal(dx, np.inf)
    np.fill_diagonal(dz, np.inf)
    eps = np.sort(np.maximum(dx, dz), axis=1)[:, k - 1]
    radius = np.nextafter(eps, np.zeros_like(eps))
    nx = (dx <= radius[:, None]).sum(1)
    nz = (dz <= radius[:, None]).sum(1)
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(nz + 1)))


def ksg_samples(n: int, seed: int, *, dim_x: int = 1, step: float | None = None):
    """A nonlinear dependence; ``step`` rounds the values to a grid, creating many ties."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim_x))
    z = x[:, :1] ** 2 + 0.5 * rng.standard_normal((n, 1))
    if step is not None:
        x, z = np.round(x / step) * step, np.round(z / step) * step
    return x.astype(np.float32), z.astype(np.float32)


# The search stages, compiled once for all the cases below (rather than op by op).
slab_search = jax.jit(mi._slab_kth_distance, static_argnums=(2, 3, 4, 5, 6))
window_search = jax.jit(mi._window_kth_distance, static_argnums=(3, 4))
fill_inexact = jax.jit(mi._fill_inexact, static_argnums=(4, 5, 6))


def test_sorted_counts_equal_brute_force_counts_with_ties():
    # Values on a grid of 1/4 and radii equal to exact differences: every count has ties
    # at the boundary, which the binary search on rounded differences must keep.
    rng = np.random.default_rng(0)
    v = (rng.integers(-20, 21, 500) / 4.0).astype(np.float32)
    radius = (rng.integers(0, 12, 500) / 4.0).astype(np.float32)
    radius[::7] = np.nextafter(radius[::7], np.float32(0))  # just inside a tie
    brute = (np.abs(v[:, None] - v[None, :]) <= radius[:, None]).sum(1)
    sorted_count = jax.jit(lambda v, radius: mi._sorted_count(jnp.sort(v), v, radius))
    counts = sorted_count(jnp.asarray(v), jnp.asarray(radius))
    np.testing.assert_array_equal(np.asarray(counts), brute)
    # The same through the marginal helper (self excluded), 1-D and a chunked 2-D marginal.
    marginal_count = jax.jit(mi._marginal_count, static_argnums=2)
    np.testing.assert_array_equal(np.asarray(marginal_count(v[:, None], radius, 64)), brute - 1)
    v2 = np.stack([v, np.roll(v, 1)], axis=1)
    brute2 = (np.abs(v2[:, None] - v2[None]).max(-1) <= radius[:, None]).sum(1)
    np.testing.assert_array_equal(np.asarray(marginal_count(v2, radius, 64)), brute2 - 1)


@pytest.mark.parametrize("step", (None, 0.25))
def test_slab_search_gives_exact_neighbour_distances(step):
    x, z = ksg_samples(400, seed=1, step=step)
    order = np.argsort(x[:, 0], kind="stable")
    x, z = x[order], z[order]
    dx = np.abs(x[:, None] - x[None]).max(-1)
    dz = np.abs(z[:, None] - z[None]).max(-1)
    joint = np.maximum(dx, dz)
    np.fill_diagonal(joint, np.inf)
    brute = np.sort(joint, axis=1)[:, 2]
    slab, reach, per_side, _ = mi.ksg_layout(400, 3)
    eps, exact = slab_search(jnp.asarray(x), jnp.asarray(z), 3, 64, slab, reach, per_side)
    eps, exact = np.asarray(eps), np.asarray(exact)
    assert exact.any()
    np.testing.assert_array_equal(eps[exact], brute[exact])  # a proof is never wrong
    # The window searches, in X order and in Z order: again a proof is never wrong.
    both = np.concatenate([x, z], axis=1)
    z_order = np.argsort(z[:, 0], kind="stable")
    for rows, pos in ((both, np.arange(400)), (both[z_order], np.argsort(z_order))):
        found, proven = window_search(
            jnp.asarray(rows),
            jnp.asarray(rows[:, 1 if rows is not both else 0]),
            jnp.asarray(pos, jnp.int32),
            3,
            50,
        )
        found, proven = np.asarray(found), np.asarray(proven)
        assert proven.any()
        np.testing.assert_array_equal(found[proven], brute[proven])
    # Every tier together (a narrow window leaves work to the exhaustive search).
    for w in (8, 400):
        filled = fill_inexact(jnp.asarray(x), jnp.asarray(z), eps, exact, 3, 16, w)
        np.testing.assert_array_equal(np.asarray(filled), brute)


# Chunks: padded (7, 64) and a single chunk (300 = n); cases of one shape share compilations.
@pytest.mark.parametrize(
    "dim_x,step,k,chunks", [(1, None, 3, (7, 64)), (1, 0.25, 3, (64,)), (2, None, 4, (300,))]
)
def test_ksg_matches_brute_force_both_methods_any_chunk(dim_x, step, k, chunks):
    x, z = ksg_samples(300, seed=3, dim_x=dim_x, step=step)
    ref = ksg_brute_force(x.astype(np.float64), z.astype(np.float64), k)
    for method in ("sorted", "dense"):
        for chunk in chunks:
            est = float(mi.ksg_mi(x, z, k=k, chunk_size=chunk, method=method))
            assert est == pytest.approx(ref, abs=2e-6), (method, chunk)
    clipped = float(mi.ksg_mi(x, z, k=k, chunk_size=chunks[0], clip_at_zero=True))
    assert clipped == pytest.approx(max(ref, 0.0), abs=2e-6)


def test_ksg_agrees_with_scikit_learn():
    cc = pytest.importorskip("sklearn.feature_selection._mutual_info")
    for rho in RHOS:
        x, z = bivariate(rho, 3000, seed=10)
        # The same points for both: scikit-learn's internal estimator, without its
        # rescaling and 1e-10 noise, on the float32 values widened to float64.
        theirs = cc._compute_mi_cc(x[:, 0].astype(np.float64), z[:, 0].astype(np.float64), 3)
        ours = float(mi.ksg_mi(x, z, k=3, clip_at_zero=True))
        assert ours == pytest.approx(theirs, abs=1e-5), rho


@pytest.mark.parametrize("rho", RHOS)
def test_ksg_recovers_gaussian_mi(rho):
    # n = 3000 and default chunks, as in the scikit-learn comparison: one compilation.
    x, z = bivariate(rho, 3000, seed=2)
    est = float(mi.ksg_mi(x, z, k=3))
    assert abs(est - gaussian_truth(rho)) < 0.05


def test_ksg_is_invariant_to_monotone_maps_of_each_variable():
    # KSG ranks neighbours per variable; a monotone map changes distances, so the
    # estimate moves only by estimator noise. MI itself is exactly invariant.
    x, z = bivariate(0.7, 3000, seed=4)
    base = float(mi.ksg_mi(x, z))
    warped = float(mi.ksg_mi(np.exp(x), z**3))
    assert abs(base - gaussian_truth(0.7)) < 0.05
    assert abs(warped - gaussian_truth(0.7)) < 0.1


def test_ksg_rejects_bad_arguments():
    x, z = bivariate(0.5, 50, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        mi.ksg_mi(x, z, k=50)
    with pytest.raises(ValueError, match="method"):
        mi.ksg_mi(x, z, method="kdtree")
    with pytest.raises(ValueError, match="same number of rows"):
        mi.ksg_mi(x, z[:-1])


# ------------------------------------------------------------------------------ variational


def optimal_log_ratio(rho: float):
    """log p(x, z) / (p(x) p(z)) for the unit bivariate Gaussian with correlation rho."""
    s = 1.0 - rho**2

    def f(x, z):
        x, z = x[:, 0], z[:, 0]
        return (
            -0.5 * math.log(s)
            - (x[:, None] ** 2 - 2 * rho * x[:, None] * z[None, :] + z[None, :] ** 2) / (2 * s)
            + (x[:, None] ** 2 + z[None, :] ** 2) / 2
        )

    return f


@pytest.mark.parametrize("rho", (0.5, 0.9))
def test_bounds_with_optimal_critic(rho):
    # With the true log density ratio: DV and NWJ (critic 1 + log r) are tight in
    # expectation; InfoNCE is below the truth, with a gap that shrinks as K grows.
    x, z = bivariate(rho, 8192, seed=5)
    f = optimal_log_ratio(rho)
    truth = gaussian_truth(rho)
    blocks = [(x[i : i + 512], z[i : i + 512]) for i in range(0, 8192, 512)]

    @jax.jit
    def bounds(a, b):
        return (
            mi.dv_bound(f(a, b)),
            mi.nwj_bound(1.0 + f(a, b)),
            mi.infonce_bound(f(a, b)),
            mi.infonce_bound(f(a[:8], b[:8])),
        )

    per_block = [bounds(a, b) for a, b in blocks]
    dv, nwj, nce, nce_small = (np.mean([float(v[i]) for v in per_block]) for i in range(4))
    assert dv == pytest.approx(truth, abs=0.05)
    assert nwj == pytest.approx(truth, abs=0.05)
    assert nce <= truth + 0.02 and nce == pytest.approx(truth, abs=0.05)
    assert nce_small <= math.log(8) + 1e-6 and nce_small < nce


def test_infonce_never_exceeds_log_k():
    scores = 50.0 * np.eye(16, dtype=np.float32)  # a critic that identifies every positive pair
    assert float(jax.jit(mi.infonce_bound)(scores)) == pytest.approx(math.log(16), abs=1e-5)


@pytest.mark.parametrize("bound", ("dv", "nwj", "infonce"))
def test_trained_critic_bounds_below_truth(bound):
    # A small flax critic trained on half the samples and evaluated on the other half:
    # in expectation a lower bound, and close to the truth for these easy densities.
    # Tolerances: held-out noise (~0.03 nats at n = 2000) above, critic bias (~0.15) below.
    # 600 steps: after 300 the DV and NWJ critics at rho = 0.9 were still about 0.1 nats
    # short (0.64-0.76 and 0.70-0.71 against 0.83), which rounding alone moved across the
    # tolerance (XLA's two CPU fusion emitters); after 600 all three are within 0.05.
    for rho in RHOS:
        x, z = bivariate(rho, 4000, seed=6)
        est = float(
            mi.variational_mi(
                jax.random.PRNGKey(0), x, z, bound=bound, num_steps=600, batch_size=128
            )
        )
        truth = gaussian_truth(rho)
        assert est <= truth + 0.03, (bound, rho, est, truth)
        assert est >= truth - 0.15, (bound, rho, est, truth)


def test_variational_with_discrete_labels():
    # I(Y; Z) with Y uniform on 4 classes and Z = Y exactly recoverable: MI = log 4.
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 4000)
    z = np.eye(4)[y] * 3.0 + 0.05 * rng.standard_normal((4000, 4))
    est = float(
        mi.variational_mi(
            jax.random.PRNGKey(1), mi.one_hot_labels(y, 4), z, bound="infonce", num_steps=400
        )
    )
    assert math.log(4) - 0.1 <= est <= math.log(4) + 0.03


def test_chunked_map_matches_direct_call():
    x = jnp.arange(23.0).reshape(23, 1)
    out = jax.jit(
        lambda x: mi.chunked_map(lambda a: {"sq": a**2, "sum": jnp.sum(a, axis=1)}, x, chunk_size=5)
    )(x)
    np.testing.assert_allclose(out["sq"], x**2)
    np.testing.assert_allclose(out["sum"], x[:, 0])


@pytest.mark.parametrize("method", ("sorted", "dense"))
def test_ksg_compiles_once_per_shape(method):
    x, z = bivariate(0.5, 300, seed=8)
    float(mi.ksg_mi(x, z, chunk_size=7, method=method))
    x2, z2 = bivariate(0.3, 300, seed=9)
    with CompileCounter() as counter:
        float(mi.ksg_mi(x2, z2, chunk_size=7, method=method))
    assert counter.count == 0, counter.names
