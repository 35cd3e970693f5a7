"""Known-answer tests for the adversarial-training objectives and regularisers."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from advjax import geometry, losses
from advjax.attacks.ascent import ascent
from advjax.objectives import Forward, build_objective
from advjax.objectives.fast import fgsm_rs_perturbation, free_at_step
from advjax.objectives.mart import mart_terms
from advjax.objectives.regression import squared_pgd
from advjax.objectives.regularizers import input_gradient_terms, random_projection_frobenius
from advjax.objectives.trades import trades_perturbation


class TinyMLP(nn.Module):
    """A smooth (tanh) two-layer net, so second derivatives are well defined everywhere."""

    num_classes: int = 3
    hidden: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = jnp.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def make_forward(module) -> Forward:
    return Forward(
        train=lambda p, x: (module.apply({"params": p}, x, train=True), {}),
        eval=lambda p, x: module.apply({"params": p}, x, train=False),
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _params_and_batch(module, shape, num_classes, key):
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.uniform(kx, shape)
    y = jax.random.randint(ky, (shape[0],), 0, num_classes)
    params = module.init(kp, x)["params"]
    return params, {"x": x, "y": y}


def setup(module, shape=(6, 4, 4, 1), num_classes=3, seed=0):
    params, batch = _params_and_batch(module, shape, num_classes, jax.random.PRNGKey(seed))
    return params, make_forward(module), batch


def reference_ce(module, params, x, y):
    logits = module.apply({"params": params}, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def config(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(kw)


def linf_attack(eps, step_size=0.01, num_steps=5):
    return config(name="pgd", norm="linf", eps=eps, step_size=step_size, num_steps=num_steps)


# ----------------------------------------------------------------------------- TRADES


@pytest.mark.parametrize(
    "cfg",
    [
        config(name="trades", beta=0.0, attack=linf_attack(0.3)),
        config(name="pgd_at", attack=linf_attack(0.0)),
    ],
    ids=["trades_beta0", "pgd_at_eps0"],
)
def test_limits_equal_the_standard_objective(cfg):
    module = TinyMLP()
    params, forward, batch = setup(module)
    key = jax.random.PRNGKey(1)
    standard = build_objective(config(name="standard"))
    grad_fn = lambda o: jax.jit(  # noqa: E731
        jax.value_and_grad(o.loss_fn, has_aux=True), static_argnums=1
    )(params, forward, batch, key, None)
    (loss, _), grads = grad_fn(build_objective(cfg))
    (ref, _), ref_grads = grad_fn(standard)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_trades_with_eps_zero_has_no_robust_term():
    # x' = x exactly, so KL(p(x) || p(x')) = 0 and the loss is CE for any beta.
    module = TinyMLP()
    params, forward, batch = setup(module)
    objective = build_objective(config(name="trades", beta=6.0, attack=linf_attack(0.0)))
    loss, aux = jax.jit(objective.loss_fn, static_argnums=1)(
        params, forward, batch, jax.random.PRNGKey(1), None
    )
    np.testing.assert_allclose(aux["metrics"]["loss_robust"], 0.0, atol=1e-7)
    np.testing.assert_allclose(
        loss,
        jax.jit(reference_ce, static_argnums=0)(module, params, batch["x"], batch["y"]),
        rtol=1e-6,
    )


def test_trades_inner_max_reaches_a_vertex_for_a_binary_linear_model():
    # With two classes, KL(p(x) || p(x')) depends only on the logit shift u = w.delta
    # (w = w_1 - w_0) and grows monotonically in |u| on either side of 0; from the
    # tiny Gaussian start, sign-PGD therefore runs to delta = s * eps * sign(w) with
    # s = +1 or -1 (inputs away from the box edges so the box is inactive).
    module = Linear(num_classes=2)
    eps = 0.1

    @jax.jit
    def delta_and_vertex(key, attack_key):
        kx, kp = jax.random.split(key)
        x = jax.random.uniform(kx, (8, 12), minval=0.4, maxval=0.6)
        params = module.init(kp, x)["params"]
        w = params["Dense_0"]["kernel"][:, 1] - params["Dense_0"]["kernel"][:, 0]
        delta = trades_perturbation(
            lambda z: module.apply({"params": params}, z),
            x,
            attack_key,
            eps=eps,
            step_size=0.03,
            num_steps=10,
        )
        vertex = eps * jnp.sign(w)[None]
        side = jnp.sign(jnp.sum(delta * vertex, axis=1, keepdims=True))
        return delta, side * vertex

    delta, vertex = delta_and_vertex(jax.random.PRNGKey(3), jax.random.PRNGKey(4))
    np.testing.assert_allclose(delta, vertex, atol=1e-6)


def reference_trades_delta(logits_fn, x, key, *, eps, step_size, num_steps):
    """TRADES' inner loop written out (Zhang et al.'s ``trades_loss``, l_inf, box [0, 1]):
    x' = x + 0.001 N(0, I) (one key per example), then ``num_steps`` signed steps on
    KL(p(x) || p(x')), each clipped to the ball and the box; the last iterate is kept."""
    project = lambda d: jnp.clip(jnp.clip(d, -eps, eps), -x, 1.0 - x)  # noqa: E731
    keys = jax.random.split(key, x.shape[0])
    delta = project(jax.vmap(lambda k: 0.001 * jax.random.normal(k, x.shape[1:]))(keys))
    p_clean = jax.nn.softmax(logits_fn(x))

    def kl(d):
        log_q = jax.nn.log_softmax(logits_fn(x + d))
        return jnp.sum(p_clean * (jnp.log(p_clean) - log_q))

    for _ in range(num_steps):
        delta = project(delta + step_size * jnp.sign(jax.grad(kl)(delta)))
    return delta


def test_trades_inner_max_equals_the_reference_loop_on_a_linear_softmax_model():
    module = Linear(num_classes=3)
    eps, step, steps = 0.2, 0.03, 10
    forward = make_forward(module)
    objective = build_objective(
        config(name="trades", beta=1.0, attack=linf_attack(eps, step_size=step, num_steps=steps))
    )

    @jax.jit
    def compute(data_key, key):
        kx, kp = jax.random.split(data_key)
        # A quarter of the pixels on the box edges, so the box constraint is active too.
        x = jax.random.uniform(kx, (8, 12))
        x = jnp.where(jnp.arange(12) % 4 == 0, jnp.round(x), x)
        y = jnp.arange(8) % 3
        params = module.init(kp, x)["params"]
        logits_fn = lambda z: module.apply({"params": params}, z)  # noqa: E731
        delta = trades_perturbation(logits_fn, x, key, eps=eps, step_size=step, num_steps=steps)
        want = reference_trades_delta(logits_fn, x, key, eps=eps, step_size=step, num_steps=steps)
        # The objective runs the same inner maximisation through the registry attack, with
        # the eps ramp scaling eps and the step together.
        batch = {"x": x, "y": y, "eps_scale": jnp.float32(0.5)}
        _, aux = objective.loss_fn(params, forward, batch, key, None)
        half = reference_trades_delta(
            logits_fn, x, key, eps=eps / 2, step_size=step / 2, num_steps=steps
        )
        kl = losses.kl_divergence(logits_fn(x), logits_fn(x + half))
        return delta, want, aux["metrics"]["loss_robust"], jnp.mean(kl)

    delta, want, loss_robust, mean_kl = compute(jax.random.PRNGKey(21), jax.random.PRNGKey(22))
    np.testing.assert_allclose(delta, want, atol=1e-6)
    np.testing.assert_allclose(loss_robust, mean_kl, rtol=1e-5)


def test_trades_keeps_the_last_iterate_where_it_is_not_the_best():
    # On a linear softmax model the KL is convex in delta and sign-PGD only climbs, so the
    # last iterate is also the best. High-frequency cosine features make it oscillate:
    # there the reference loop's last iterate differs from the best one.
    w = jnp.asarray(np.random.default_rng(25).normal(size=(12, 3)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(26).uniform(0.3, 0.7, size=(8, 12)), jnp.float32)
    key, kw = jax.random.PRNGKey(22), dict(eps=0.2, step_size=0.05, num_steps=10)

    @jax.jit
    def compute(w, x, key):
        logits_fn = lambda z: jnp.cos(10.0 * z) @ w  # noqa: E731
        delta = trades_perturbation(logits_fn, x, key, **kw)
        want = reference_trades_delta(logits_fn, x, key, **kw)
        best = ascent(
            logits_fn,
            x,
            jnp.zeros(8, jnp.int32),
            key,
            loss="kl",
            start="gaussian",
            keep="best",
            **kw,
        )
        return delta, want, jnp.max(jnp.abs(best.delta - want))

    delta, want, best_gap = compute(w, x, key)
    np.testing.assert_allclose(delta, want, atol=1e-6)
    assert float(best_gap) > 0.01


# ----------------------------------------------------------------------------- regression


def test_squared_pgd_reaches_the_linf_closed_form_on_a_linear_regressor():
    # f(x) = w.x + b, residual r = y - f(x): over ||delta||_inf <= eps the largest
    # |y - f(x + delta)| is |r| + eps ||w||_1, at delta = -eps sign(r) sign(w).
    rng = np.random.default_rng(23)
    w, b, eps = jnp.asarray(rng.normal(size=5), jnp.float32), 0.3, 0.25
    x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=16), jnp.float32)

    @jax.jit
    def compute(w, x, y, key):
        x_adv = squared_pgd(
            lambda z: z @ w + b,
            x,
            y,
            key,
            norm="linf",
            eps=eps,
            step_size=eps / 4,
            num_steps=8,
            num_restarts=2,
        )
        residual = y - x @ w - b
        want = jnp.abs(residual) + eps * jnp.sum(jnp.abs(w))
        want_delta = -eps * jnp.sign(residual)[:, None] * jnp.sign(w)[None]
        return jnp.abs(y - x_adv @ w - b), want, x_adv - x, want_delta

    got, want, delta, want_delta = compute(w, x, y, jax.random.PRNGKey(24))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(delta, want_delta, atol=1e-6)


# ----------------------------------------------------------------------------- MART


def test_mart_terms_match_a_direct_computation():
    rng = np.random.default_rng(0)
    logits_clean = rng.normal(size=(7, 5)) * 3
    logits_adv = rng.normal(size=(7, 5)) * 3
    logits_adv[0, 2] = 40.0  # a near-certain wrong class: log(1 - p) must stay finite
    y = rng.integers(0, 5, size=7)
    y[0] = 0
    p = np.exp(logits_clean) / np.exp(logits_clean).sum(1, keepdims=True)
    q = np.exp(logits_adv - logits_adv.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    rows = np.arange(7)
    q_wrong = q.copy()
    q_wrong[rows, y] = -1
    # 1 - max_{k != y} q_k as the sum of the remaining probabilities: no cancellation.
    k_star = q_wrong.argmax(1)
    one_minus = np.array([np.delete(q[i], k_star[i]).sum() for i in rows])
    want_bce = -np.log(q[rows, y]) - np.log(one_minus)
    want_kl = (p * (np.log(p) - np.log(q))).sum(1)
    terms = jax.jit(mart_terms)(jnp.asarray(logits_clean), jnp.asarray(logits_adv), jnp.asarray(y))
    np.testing.assert_allclose(terms["bce"], want_bce, rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], want_kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms["weight"], 1 - p[rows, y], rtol=1e-5)


def test_mart_loss_with_eps_zero_is_boosted_cross_entropy_on_clean_inputs():
    module = TinyMLP()
    params, forward, batch = setup(module)
    objective = build_objective(config(name="mart", beta=6.0, attack=linf_attack(0.0)))
    loss, aux = jax.jit(objective.loss_fn, static_argnums=1)(
        params, forward, batch, jax.random.PRNGKey(1), None
    )

    @jax.jit
    def boosted_ce(params, x, y):
        logits = module.apply({"params": params}, x)
        terms = mart_terms(logits, logits, y)
        return jnp.mean(terms["bce"])

    np.testing.assert_allclose(aux["metrics"]["loss_robust"], 0.0, atol=1e-7)
    np.testing.assert_allclose(loss, boosted_ce(params, batch["x"], batch["y"]), rtol=1e-6)


# ----------------------------------------------------------------------------- FGSM-RS


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_rs_perturbation_stays_in_ball_and_box(norm):
    module = TinyMLP()

    @jax.jit
    def compute(data_key, key, eps_scale):
        kx, kp = jax.random.split(data_key)
        # Half the pixels sit on the box edges, where the box constraint is active.
        x = jnp.round(jax.random.uniform(kx, (16, 4, 4, 1)) * 4) / 4
        params = module.init(kp, x)["params"]
        y = jnp.arange(16) % 3
        # eps as the training loop's ramp-up hands it over: a traced product.
        eps = (0.3 if norm == "linf" else 1.0) * eps_scale
        delta = fgsm_rs_perturbation(
            lambda z: module.apply({"params": params}, z),
            x,
            y,
            key,
            norm=norm,
            eps=eps,
            step_size=1.25 * eps,
        )
        return eps, geometry.lp_norm(delta, norm=norm), x + delta

    eps, norms, x_adv = jax.device_get(
        compute(jax.random.PRNGKey(5), jax.random.PRNGKey(6), jnp.float32(0.5))
    )
    assert np.all(norms <= eps * (1 + 1e-6))
    assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))
    assert np.max(norms) > 0.5 * eps


def test_fgsm_rs_step_is_the_signed_gradient_step_for_a_linear_model():
    # Binary linear model, label 1: grad_x CE = (p_1 - 1) w with p_1 < 1, so the step is
    # -alpha * sign(w) from the same uniform start, then clipped to the ball and box.
    module = Linear(num_classes=2)
    eps = 0.2

    @jax.jit
    def compute(data_key, key):
        kx, kp = jax.random.split(data_key)
        x = jax.random.uniform(kx, (5, 10))
        params = module.init(kp, x)["params"]
        w = params["Dense_0"]["kernel"][:, 1] - params["Dense_0"]["kernel"][:, 0]
        y = jnp.ones((5,), jnp.int32)
        delta = fgsm_rs_perturbation(
            lambda z: module.apply({"params": params}, z), x, y, key, eps=eps, step_size=1.25 * eps
        )
        # The ascent core draws the uniform start with one key per example, split from key.
        draw = lambda k: jax.random.uniform(k, x.shape[1:], minval=-eps, maxval=eps)  # noqa: E731
        start = jnp.clip(jax.vmap(draw)(jax.random.split(key, x.shape[0])), -x, 1 - x)
        want = jnp.clip(jnp.clip(start - 1.25 * eps * jnp.sign(w)[None], -eps, eps), -x, 1 - x)
        return delta, want

    delta, want = compute(jax.random.PRNGKey(7), jax.random.PRNGKey(8))
    np.testing.assert_allclose(delta, want, atol=1e-6)


def test_fgsm_rs_loss_is_cross_entropy_at_the_perturbed_point():
    module = TinyMLP()
    params, forward, batch = setup(module)
    eps, key = 0.1, jax.random.PRNGKey(9)
    objective = build_objective(config(name="fgsm_rs", eps=eps))
    (loss, _), grads = jax.jit(
        jax.value_and_grad(objective.loss_fn, has_aux=True), static_argnums=1
    )(params, forward, batch, key, None)

    @jax.jit
    def reference(params, batch, key):
        delta = fgsm_rs_perturbation(
            lambda z: forward.eval(params, z),
            batch["x"],
            batch["y"],
            key,
            eps=eps,
            step_size=1.25 * eps,
        )
        # The perturbation is a constant of the outer gradient (no gradient through delta).
        return jax.value_and_grad(reference_ce, argnums=1)(
            module, params, batch["x"] + delta, batch["y"]
        )

    ref, ref_grads = reference(params, batch, key)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- Free AT


def test_free_at_replay_is_a_signed_input_gradient_step_and_a_plain_parameter_gradient():
    module = TinyMLP()
    params, forward, batch = setup(module)
    x, y = batch["x"], batch["y"]
    eps = 0.1
    objective = build_objective(config(name="free_at", eps=eps, replays=4))
    assert objective.replays == 4 and objective.uses_carry
    carry = jax.random.uniform(jax.random.PRNGKey(2), x.shape, minval=-0.2, maxval=0.2)
    grad_fn = jax.jit(jax.value_and_grad(objective.loss_fn, has_aux=True), static_argnums=1)
    (loss, aux), grads = grad_fn(params, forward, batch, jax.random.PRNGKey(0), carry)

    # Reference: project the incoming carry, then one separate gradient per quantity.
    @jax.jit
    def reference(params, x, y, carry):
        delta = jnp.clip(jnp.clip(carry, -eps, eps), -x, 1 - x)
        ref, ref_grads = jax.value_and_grad(reference_ce, argnums=1)(module, params, x + delta, y)
        g_x = jax.grad(lambda d: reference_ce(module, params, x + d, y))(delta)
        want_carry = jnp.clip(jnp.clip(delta + eps * jnp.sign(g_x), -eps, eps), -x, 1 - x)
        return ref, ref_grads, want_carry

    ref, ref_grads, want_carry = reference(params, x, y, carry)
    np.testing.assert_allclose(aux["carry"], want_carry, atol=1e-6)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_free_at_replays_keep_the_perturbation_in_the_ball():
    module = TinyMLP()
    params, forward, batch = setup(module)
    eps = 0.05
    optimizer = optax.sgd(0.5)
    opt_state = optimizer.init(params)
    carry = jnp.zeros_like(batch["x"])

    @jax.jit
    def replay(params, opt_state, carry):
        loss, g, carry, _, _ = free_at_step(
            forward.train, params, batch["x"], batch["y"], carry, eps=eps, step_size=eps
        )
        updates, opt_state = optimizer.update(g, opt_state)
        return loss, optax.apply_updates(params, updates), opt_state, carry

    losses_seen = []
    for _ in range(6):  # replays of one batch, each with its own parameter update
        loss, params, opt_state, carry = replay(params, opt_state, carry)
        losses_seen.append(float(loss))
        assert np.max(np.abs(carry)) <= eps + 1e-7
    # Every coordinate with a nonzero input gradient has moved a full step to the boundary.
    assert float(np.mean(np.abs(carry) > 0.99 * eps)) > 0.9


# ----------------------------------------------------------------------------- regularisers


def test_double_backprop_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        module = TinyMLP(num_classes=3, hidden=5)

        @jax.jit
        def data_and_params(key):
            kx, ky, kp = jax.random.split(key, 3)
            x = jax.random.uniform(kx, (4, 6), dtype=jnp.float64)
            y = jax.random.randint(ky, (4,), 0, 3)
            params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(kp, x)["params"])
            return x, y, params

        x, y, params = data_and_params(jax.random.PRNGKey(11))
        forward = make_forward(module)
        weight = 0.7
        objective = build_objective(config(name="input_gradient", weight=weight))

        @jax.jit
        def loss_of(p):
            return objective.loss_fn(p, forward, {"x": x, "y": y}, jax.random.PRNGKey(0), None)[0]

        grads = jax.jit(jax.grad(loss_of))(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        flat_grad = jax.flatten_util.ravel_pytree(grads)[0]
        h = 1e-6

        def central_difference(i):
            up, down = unravel(flat.at[i].add(h)), unravel(flat.at[i].add(-h))
            return (loss_of(up) - loss_of(down)) / (2 * h)

        fd = np.asarray(jax.jit(jax.vmap(central_difference))(jnp.arange(flat.size)))
        np.testing.assert_allclose(flat_grad, fd, rtol=1e-6, atol=1e-9)

        # The penalty is the per-example squared input-gradient norm, averaged.
        @jax.jit
        def penalty_terms(params):
            def ce_one(xi, yi):
                logits = module.apply({"params": params}, xi[None])
                return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

            per_example = jax.vmap(jax.grad(ce_one))(x, y)
            ce, grad_sq, _, _ = input_gradient_terms(forward.train, params, x, y)
            want_loss = jnp.mean(ce) + weight * jnp.mean(grad_sq)
            return grad_sq, jnp.sum(per_example**2, axis=1), want_loss

        grad_sq, want_grad_sq, want_loss = penalty_terms(params)
        np.testing.assert_allclose(grad_sq, want_grad_sq, rtol=1e-10)
        np.testing.assert_allclose(loss_of(params), want_loss, rtol=1e-12)


def test_jacobian_projection_estimate_matches_exact_frobenius_norm():
    module = TinyMLP(num_classes=4, hidden=6)
    params, forward, batch = setup(module, shape=(3, 5), num_classes=4)
    num_projections = 4000

    @jax.jit
    def compute(params, x, key):
        logits_fn = lambda z: module.apply({"params": params}, z)
        logits, vjp_fn = jax.vjp(logits_fn, x)
        estimate = random_projection_frobenius(
            lambda v: vjp_fn(v)[0], 3, 4, key, num_projections=num_projections
        )
        jac = jax.vmap(lambda xi: jax.jacrev(lambda z: logits_fn(z[None])[0])(xi))(x)  # [B, C, D]
        gram = jnp.einsum("bcd,bed->bce", jac, jac)  # A = J J^T
        tr = jnp.trace(gram, axis1=1, axis2=2)
        tr_sq = jnp.einsum("bce,bec->b", gram, gram)
        c = 4
        # For v uniform on S^{C-1}: E[(v^T A v)^2] = (tr(A)^2 + 2 tr(A^2)) / (C (C + 2)), so
        # Var[C v^T A v] = C^2 * that - tr(A)^2.
        var = c**2 * (tr**2 + 2 * tr_sq) / (c * (c + 2)) - tr**2
        standard_error = jnp.sqrt(var / num_projections)
        return estimate, tr, standard_error

    estimate, tr, standard_error = jax.device_get(
        compute(params, batch["x"], jax.random.PRNGKey(12))
    )
    assert np.all(np.abs(estimate - tr) < 4 * standard_error), (estimate, tr, standard_error)
    assert np.all(standard_error < 0.05 * tr)  # the check is sharp, not vacuous


def test_jacobian_objective_penalty_uses_half_the_weight():
    module = TinyMLP()
    params, forward, batch = setup(module)
    key = jax.random.PRNGKey(13)
    objective = build_objective(config(name="jacobian", weight=0.4, num_projections=3))

    @jax.jit
    def compute(params, batch, key):
        loss, aux = objective.loss_fn(params, forward, batch, key, None)
        _, vjp_fn = jax.vjp(lambda z: forward.eval(params, z), batch["x"])
        frob = random_projection_frobenius(
            lambda v: vjp_fn(v)[0], batch["x"].shape[0], 3, key, num_projections=3
        )
        ce = reference_ce(module, params, batch["x"], batch["y"])
        want_loss = ce + 0.2 * jnp.mean(frob)
        return loss, want_loss, aux["metrics"]["jacobian_frobenius_sq"], jnp.mean(frob)

    loss, want_loss, frobenius_sq, mean_frob = compute(params, batch, key)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(frobenius_sq, mean_frob, rtol=1e-5)


@pytest.mark.parametrize(
    "cfg, key",
    [
        (config(name="trades", beta=-1.0, attack=linf_attack(0.3)), "train.objective.beta"),
        (config(name="fgsm_rs", eps=0.3, norm="l1"), "train.objective.norm"),
        (config(name="free_at", eps=0.3, replays=0), "train.objective.replays"),
        (config(name="jacobian", weight=0.1, num_projections=0), "num_projections"),
        (config(name="input_gradient", weight=-2.0), "train.objective.weight"),
    ],
)
def test_bad_hyperparameters_name_the_config_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        build_objective(cfg)
