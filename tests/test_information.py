"""Known-answer tests for the KL metric, input Fisher information and its decomposition
(advjax.analysis.information) and for the Fisher / KL-regularised objective."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax.analysis import information as info
from advjax.attacks.pgd import pgd
from advjax.objectives import Forward
from advjax.objectives.fisher import build_fisher_kl


def linear_model(seed: int = 0, d: int = 12, c: int = 5, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(c, d)), dtype)
    b = jnp.asarray(rng.normal(size=(c,)), dtype)
    return w, b, lambda x: x.reshape(x.shape[0], -1) @ w.T + b


def tanh_mlp(seed: int = 0, d: int = 12, c: int = 5, hidden: int = 16, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(d, hidden)) / np.sqrt(d) * 2, dtype)
    w2 = jnp.asarray(rng.normal(size=(hidden, c)) * 2, dtype)
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def inputs(n: int, shape=(3, 4, 1), seed: int = 1, dtype=jnp.float32, lo=0.0, hi=1.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(lo, hi, size=(n,) + shape), dtype)


# ------------------------------------------------------------------------------ Fisher


def test_linear_softmax_fisher_closed_form():
    w, b, fn = linear_model()
    x = inputs(4)
    stats = jax.device_get(jax.jit(lambda x: info.fisher_statistics(fn, x, chunk_size=3))(x))
    probs_and_fisher = jax.jit(
        lambda xi: (jax.nn.softmax(fn(xi[None])[0]), info.fisher_matrix(fn, xi))
    )
    for i in range(4):
        p, fisher = probs_and_fisher(x[i])
        p = np.asarray(p, np.float64)
        wn = np.asarray(w, np.float64)
        closed = wn.T @ (np.diag(p) - np.outer(p, p)) @ wn
        np.testing.assert_allclose(fisher, closed, rtol=1e-4, atol=1e-5)
        ev = np.linalg.eigvalsh(closed)
        assert float(stats["frobenius"][i]) == pytest.approx(np.linalg.norm(closed), rel=1e-4)
        assert float(stats["trace"][i]) == pytest.approx(np.trace(closed), rel=1e-4)
        assert float(stats["lambda_max"][i]) == pytest.approx(ev[-1], rel=1e-4)


def test_kl_second_order_fisher_identity():
    # KL(p(x) || p(x + delta)) = delta^T F delta / 2 + O(||delta||^3) at ||delta|| = 1e-3.
    with jax.enable_x64(True):
        fn = tanh_mlp(dtype=jnp.float64)
        x = inputs(3, dtype=jnp.float64)
        rng = np.random.default_rng(2)

        @jax.jit
        def fisher_terms(xi, delta):
            f = info.fisher_matrix(fn, xi)
            fv = info.fisher_vector_product(fn, xi, delta.reshape(3, 4, 1))
            kl = info.categorical_kl(fn(xi[None]), fn(xi[None] + delta.reshape(1, 3, 4, 1)))[0]
            return f, fv, kl

        for i in range(3):
            delta = rng.normal(size=12)
            delta *= 1e-3 / np.linalg.norm(delta)
            f, fv, kl = jax.device_get(fisher_terms(x[i], delta))
            quad = 0.5 * delta @ f @ delta
            np.testing.assert_allclose(fv.ravel(), f @ delta, rtol=1e-8, atol=1e-14)
            assert abs(float(kl) - quad) / quad < 1e-2


def test_power_iteration_matches_eigvalsh():
    fn = tanh_mlp(seed=3)
    x = inputs(5, seed=4)

    @jax.jit
    def compute(x, key):
        lam, vec = info.fisher_top_eigenpair(fn, x, key, num_iters=300, chunk_size=2)
        return lam, vec, info.fisher_statistics(fn, x)

    lam, vec, stats = jax.device_get(compute(x, jax.random.PRNGKey(0)))
    fisher = jax.jit(lambda xi: info.fisher_matrix(fn, xi))
    for i in range(5):
        f = np.asarray(fisher(x[i]), np.float64)
        evals, evecs = np.linalg.eigh(f)
        assert float(lam[i]) == pytest.approx(evals[-1], rel=1e-3)
        assert float(stats["lambda_max"][i]) == pytest.approx(evals[-1], rel=1e-3)
        assert float(stats["frobenius"][i]) == pytest.approx(np.linalg.norm(f), rel=1e-3)
        assert float(stats["trace"][i]) == pytest.approx(np.trace(f), rel=1e-3)
        assert abs(np.dot(evecs[:, -1], np.asarray(vec[i]).ravel())) > 0.999
        # F has rank at most C - 1 = 4.
        assert np.sum(evals > 1e-5 * evals[-1]) <= 4


# ------------------------------------------------------------------------------ metric


def brute_force_between_class(logits: np.ndarray, labels: np.ndarray) -> float:
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    p = np.exp(logp)
    values = [
        np.sum(p[i] * (logp[i] - logp[j]))
        for i in range(len(labels))
        for j in range(len(labels))
        if labels[i] != labels[j]
    ]
    return float(np.mean(values))


def test_between_class_kl_matches_brute_force():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(40, 6)) * 2
    labels = rng.integers(0, 4, 40)
    ref = brute_force_between_class(logits, labels)
    between_class_kl = jax.jit(info.between_class_kl, static_argnames=("chunk_size", "num_pairs"))
    for chunk in (7, 40):
        assert float(between_class_kl(logits, labels, chunk_size=chunk)) == pytest.approx(
            ref, rel=1e-5
        )
    sampled = float(between_class_kl(logits, labels, key=jax.random.PRNGKey(0), num_pairs=100_000))
    assert sampled == pytest.approx(ref, rel=0.02)
    # Same class everywhere except one example: only pairs involving it count.
    same = np.zeros(40, int)
    same[3] = 1
    only = [
        brute_force_between_class(logits[[3, j]], np.array([1, 0])) for j in range(40) if j != 3
    ]
    assert float(between_class_kl(logits, same)) == pytest.approx(np.mean(only), rel=1e-5)


def test_kl_identity_holds_exactly():
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        kl_identity = jax.jit(lambda logits: info.kl_identity(logits, chunk_size=16))
        log_softmax = jax.jit(jax.nn.log_softmax)
        for trial in range(3):
            logits = jnp.asarray(rng.normal(size=(60, 7)) * (1 + 2 * trial))
            terms = jax.device_get(kl_identity(logits))
            lhs = float(terms["mean_pairwise_kl"])
            rhs = float(terms["mutual_information"] + terms["log_dispersion"])
            assert abs(lhs - rhs) < 1e-6
            assert float(terms["log_dispersion"]) >= 0.0
            # The left-hand side computed independently, pair by pair.
            logp = np.asarray(log_softmax(logits))
            brute = np.mean(
                [
                    np.sum(np.exp(logp[i]) * (logp[i] - logp[j]))
                    for i in range(60)
                    for j in range(60)
                ]
            )
            assert abs(lhs - brute) < 1e-9


# ------------------------------------------------------------------------------ worst case


def test_worst_case_kl_matches_fisher_approximation_l2():
    # Small l_2 ball inside the box: max KL = eps^2 lambda_max / 2 to second order, and
    # the ascent must find a perturbation at least as good as random ones.
    _, _, fn = linear_model(seed=7)
    x = inputs(6, lo=0.3, hi=0.7, seed=8)
    eps = 0.02

    @jax.jit
    def compute(x, key):
        lam = info.fisher_statistics(fn, x)["lambda_max"]
        x_worst, kl = info.kl_worst_case(
            fn,
            x,
            key,
            norm="l2",
            eps=eps,
            step_size=eps / 4,
            num_steps=40,
            chunk_size=4,
        )
        approx = info.fisher_local_kl(lam, eps=eps)
        kl_again = info.categorical_kl(fn(x), fn(x_worst))
        # Chunking does not change the result (one key per example).
        _, kl_whole = info.kl_worst_case(
            fn, x, key, norm="l2", eps=eps, step_size=eps / 4, num_steps=40
        )
        return x_worst - x, kl, approx, kl_again, kl_whole

    delta, kl, approx, kl_again, kl_whole = jax.device_get(compute(x, jax.random.PRNGKey(1)))
    np.testing.assert_allclose(kl, approx, rtol=0.03)
    norms = np.linalg.norm(delta.reshape(6, -1), axis=1)
    assert np.all(norms <= eps * (1 + 1e-5))
    np.testing.assert_allclose(kl_again, kl, rtol=1e-5)
    np.testing.assert_allclose(kl_whole, kl, rtol=1e-3)


def test_worst_case_linf_stays_in_threat_model():
    fn = tanh_mlp(seed=9)
    x = inputs(8, seed=10)

    @jax.jit
    def compute(x, key, rand_key):
        x_worst, kl = info.kl_worst_case(
            fn, x, key, norm="linf", eps=0.1, step_size=0.025, num_steps=10
        )
        # The ascent beats the uniform random starts it begins from.
        rand = x + jax.random.uniform(rand_key, x.shape, minval=-0.1, maxval=0.1)
        rand_kl = info.categorical_kl(fn(x), fn(jnp.clip(rand, 0, 1)))
        return x_worst, kl, rand_kl

    x_worst, kl, rand_kl = jax.device_get(compute(x, jax.random.PRNGKey(2), jax.random.PRNGKey(3)))
    assert float(np.max(np.abs(x_worst - np.asarray(x)))) <= 0.1 + 1e-6
    assert float(np.min(x_worst)) >= 0.0 and float(np.max(x_worst)) <= 1.0
    assert float(np.mean(kl)) > 2 * float(np.mean(rand_kl))


def test_decomposition_known_cases():
    fn = tanh_mlp(seed=11)
    x = inputs(30, seed=12)
    y = jnp.asarray(np.random.default_rng(13).integers(0, 3, 30))
    kwargs = dict(norm="linf", step_size=0.02, num_steps=5, chunk_size=8)
    # eps is traced, so both radii share one compilation.
    decompose = jax.jit(
        lambda eps: info.robust_decomposition(fn, x, y, jax.random.PRNGKey(0), eps=eps, **kwargs)
    )
    # eps = 0: the worst case is the clean input, so R = M and N = 0.
    zero = decompose(0.0)
    assert float(zero["N"]) == pytest.approx(0.0, abs=1e-6)
    clean = jax.jit(lambda x, y: info.between_class_kl(fn(x), y))(x, y)
    assert float(zero["R"]) == pytest.approx(float(clean), rel=1e-5)
    # eps > 0: M = R + N, and M is the between-class KL of the clean logits.
    dec = decompose(0.1)
    assert float(dec["M"]) == pytest.approx(float(dec["R"] + dec["N"]), rel=1e-6)
    assert float(dec["M"]) == pytest.approx(float(zero["M"]), rel=1e-6)
    assert float(dec["local_worst_kl"]) > 0.0
    # A model that ignores its input has no non-robust component at any eps.
    const = lambda v: jnp.tile(jnp.arange(3.0), (v.shape[0], 1)) + 0.0 * jnp.sum(v)  # noqa: E731
    flat = jax.jit(
        lambda x, y, key: info.robust_decomposition(const, x, y, key, eps=0.3, **kwargs)
    )(x, y, jax.random.PRNGKey(0))
    assert float(flat["M"]) == pytest.approx(0.0, abs=1e-6)
    assert float(flat["N"]) == pytest.approx(0.0, abs=1e-6)


def bernoulli_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(Ber(sigmoid(a)) || Ber(sigmoid(b))), i.e. KL between softmax((0, a)) and ((0, b))."""
    la, lb = -np.logaddexp(0, -a), -np.logaddexp(0, -b)  # log sigmoid
    ma, mb = -np.logaddexp(0, a), -np.logaddexp(0, b)  # log (1 - sigmoid)
    return np.exp(la) * (la - lb) + np.exp(ma) * (ma - mb)


def test_pairwise_decomposition_matches_brute_force_on_logistic_model():
    # Logits (0, w.x): an l_2 perturbation of norm <= eps moves the logit w.x by at most
    # r = eps ||w|| (along w), so the merging adversary solves a 2-d problem that a grid
    # search answers: min over a in [a0 - r, a0 + r], b in [b0 - r, b0 + r] of KL.
    rng = np.random.default_rng(14)
    w = rng.normal(size=6)
    fn = lambda v: jnp.stack([jnp.zeros(v.shape[0]), v.reshape(v.shape[0], -1) @ w], 1)  # noqa: E731
    x = jnp.asarray(rng.normal(size=(10, 6)) * 0.6, jnp.float32)
    y = jnp.asarray(np.arange(10) % 2)
    eps = 0.25
    key = jax.random.PRNGKey(5)
    kwargs = dict(norm="l2", num_pairs=12, step_size=eps / 15, num_steps=40, bounds=(-50.0, 50.0))

    @jax.jit
    def compute(x, y, key):
        out = info.pairwise_robust_decomposition(fn, x, y, key, eps=eps, chunk_size=5, **kwargs)
        pairs = info.sample_between_class_pairs(y, key, num_pairs=12)
        # eps = 0: nothing can be merged, R = M.
        zero = info.pairwise_robust_decomposition(fn, x, y, key, eps=0.0, **kwargs)
        return out, pairs, zero

    out, (i, j, valid), zero = jax.device_get(compute(x, y, key))
    assert bool(np.all(valid))
    logit = np.asarray(x, np.float64) @ w
    r = eps * np.linalg.norm(w)
    grid = np.linspace(-1.0, 1.0, 401)
    clean, merged = [], []
    for a0, b0 in zip(logit[np.asarray(i)], logit[np.asarray(j)], strict=True):
        clean.append(float(bernoulli_kl(np.array(a0), np.array(b0))))
        kl = bernoulli_kl(a0 + r * grid[:, None], b0 + r * grid[None, :])
        merged.append(float(kl.min()))
    assert float(out["M_pair"]) == pytest.approx(np.mean(clean), rel=1e-4)
    assert float(out["R_pair"]) == pytest.approx(np.mean(merged), rel=0.02, abs=2e-3)
    assert 0.0 <= float(out["R_pair"]) <= float(out["M_pair"])
    assert float(zero["N_pair"]) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------ layers


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(7)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(h)


def test_layer_representation_reads_the_named_submodule():
    module = TwoLayer()
    x = inputs(9)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)
    assert info.layer_names(module, variables, x) == ["Dense_0", "Dense_1"]

    @jax.jit
    def compute(variables, x):
        z = info.layer_representation(module, variables, x, chunk_size=4)
        p = variables["params"]["Dense_0"]
        expected = x.reshape(9, -1) @ p["kernel"] + p["bias"]
        return z, expected

    z, expected = compute(variables, x)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="analysis.layer"):
        info.layer_representation(module, variables, x, layer="Conv_9")


# ------------------------------------------------------------------------------ objective


def fisher_config(beta: float, eps: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="fisher_kl",
            beta=beta,
            attack=dict(norm="linf", eps=eps, step_size=eps / 4, num_steps=5),
        )
    )


def test_fisher_kl_objective_known_values():
    module = TwoLayer()
    x = inputs(6)
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    params = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
    forward = Forward(
        train=lambda p, v: (module.apply({"params": p}, v, train=True), {}),
        eval=lambda p, v: module.apply({"params": p}, v, train=False),
    )
    batch = {"x": x, "y": y}

    @jax.jit
    def cross_entropy(params, x, y):
        logits = module.apply({"params": params}, x)
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    ce = float(cross_entropy(params, x, y))
    key = jax.random.PRNGKey(4)
    # eps = 0: x_F = x, the KL term is 0 and the loss is the cross-entropy.
    loss0, aux0 = jax.jit(build_fisher_kl(fisher_config(5.0, 0.0)).loss_fn, static_argnums=1)(
        params, forward, batch, key, None
    )
    assert float(loss0) == pytest.approx(ce, rel=1e-6)
    assert float(aux0["metrics"]["loss_fisher"]) == pytest.approx(0.0, abs=1e-7)
    # eps > 0: loss = CE + beta * KL(p(x) || p(x_F)), x_F the KL-maximising PGD iterate.
    obj = build_fisher_kl(fisher_config(2.0, 0.2))
    (loss, aux), grads = jax.jit(
        jax.value_and_grad(lambda p: obj.loss_fn(p, forward, batch, key, None), has_aux=True)
    )(params)

    @jax.jit
    def reference(params, x, y, key):
        x_f = pgd(
            lambda v: forward.eval(params, v),
            x,
            y,
            key,
            norm="linf",
            eps=0.2,
            step_size=0.05,
            num_steps=5,
            loss="kl",
            random_start=True,
            keep_best=True,
        )
        kl = info.categorical_kl(forward.eval(params, x), forward.eval(params, x_f))
        return jnp.max(jnp.abs(x_f - x)), jnp.mean(kl)

    max_shift, mean_kl = reference(params, x, y, key)
    assert float(max_shift) <= 0.2 + 1e-6
    assert float(aux["metrics"]["loss_fisher"]) == pytest.approx(float(mean_kl), rel=1e-4)
    assert float(loss) == pytest.approx(ce + 2.0 * float(mean_kl), rel=1e-4)
    # Gradients flow through both p(x) and p(x_F).
    assert all(bool(np.all(np.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    with pytest.raises(ValueError, match="train.objective.gamma"):
        build_fisher_kl(ml_collections.ConfigDict(dict(name="fisher_kl", gamma=1.0)))
    with pytest.raises(ValueError, match="train.objective.beta"):
        build_fisher_kl(fisher_config(-1.0, 0.1))


# ------------------------------------------------------------------------------ notebook


@pytest.mark.slow
def test_notebook_runs_and_its_checks_hold(run_notebook):
    nb = run_notebook("information.ipynb")
    last = nb.cells[-1]
    text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    checks = json.loads(text.strip().splitlines()[-1])
    assert checks["fisher_closed_form_max_abs_error"] < 1e-4
    assert checks["lambda_max_power_vs_eigvalsh_rel_error"] < 1e-3
    assert checks["kl_quadratic_rel_error_at_1e-3"] < 1e-2
    assert checks["ksg_max_abs_error"] < 0.05
    assert checks["kl_identity_max_residual"] < 1e-5
    assert checks["decomposition_max_residual"] < 1e-5
    assert checks["pairwise_R_within_0_M"] is True
    keys = checks["finding_keys"]
    assert keys.index("standard_nonrobust_pair") < keys.index("standard_nonrobust_worst")


def test_component_readings_on_synthetic_curves():
    from advjax.experiments.information import READINGS, component_readings

    def curve(m, r, rp, fisher, robust, sem=0.0):
        return {
            "M": m,
            "R": r,
            "N": [a - b for a, b in zip(m, r, strict=True)],
            "M_pair": m,
            "R_pair": rp,
            "N_pair": [a - b for a, b in zip(m, rp, strict=True)],
            "R_pair_sem": [sem] * len(m),
            "N_pair_sem": [2 * sem] * len(m),
            "fisher_frobenius": fisher,
            "robust_accuracy": robust,
        }

    curves = {
        # M grows 0 -> 10, R only 0 -> 1: growth through N; Fisher rises 200x.
        "standard": curve([0, 5, 10], [0, 0.5, 1], [0, 0.2, 0.5], [0.01, 1, 2], [0, 0, 0], 0.1),
        # M grows 0 -> 2, R 0 -> 1.5: growth through R; Fisher 20x lower.
        "pgd_at": curve([0, 1, 2], [0, 1, 1.5], [0, 0.8, 1.2], [0.01, 0.05, 0.1], [0, 0.3, 0.5]),
        "trades": curve([0, 1, 1], [0, 0.2, 0.3], [0, 0.1, 0.2], [0.01, 0.5, 1], [0, 0.1, 0.2]),
    }
    out = component_readings(curves)
    # The pairwise (merging-adversary) reading comes first; both are labelled as proxies.
    assert list(out["readings"]) == ["merging_adversary", "worst_case_inputs"] == list(READINGS)
    assert all("proxy" in r["label"] for r in out["readings"].values())
    assert "not the paper's metric" in out["note"]
    pair = out["readings"]["merging_adversary"]["regimes"]
    worst = out["readings"]["worst_case_inputs"]["regimes"]
    assert worst["standard"]["delta_N"] == pytest.approx(9.0)
    assert worst["standard"]["delta_R"] == pytest.approx(1.0)
    assert worst["pgd_at"]["final_R_share"] == pytest.approx(0.75)
    assert worst["trades"]["final_N_share"] == pytest.approx(0.7)
    assert pair["pgd_at"]["final_R_share"] == pytest.approx(0.6)
    assert pair["standard"]["final_N_share"] == pytest.approx(0.95)
    # 95% normal intervals over the sampled pairs: centre +- 1.96 sem.
    lo, hi = pair["standard"]["final_R_interval_over_pairs"]
    assert (lo, hi) == pytest.approx((0.5 - 1.959964 * 0.1, 0.5 + 1.959964 * 0.1), rel=1e-6)
    lo, hi = pair["standard"]["final_N_interval_over_pairs"]
    assert (lo, hi) == pytest.approx((9.5 - 1.959964 * 0.2, 9.5 + 1.959964 * 0.2), rel=1e-6)
    assert "final_R_interval_over_pairs" not in worst["standard"]

    # Measured quantities only: no booleans anywhere in the readings.
    def leaves(tree):
        if isinstance(tree, dict):
            return [v for x in tree.values() for v in leaves(x)]
        return [tree]

    assert not any(isinstance(v, bool) for v in leaves(out))
    json.dumps(out)  # JSON-able
    assert out["fisher"]["standard_final_over_initial"] == pytest.approx(200.0)
    assert out["fisher"]["pgd_at_standard_over_this"] == pytest.approx(20.0)
    # Fisher order (pgd_at < trades < standard) is the reverse of robust accuracy order.
    assert out["fisher"]["spearman_fisher_vs_robust_accuracy"] == pytest.approx(-1.0)
