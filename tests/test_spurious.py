"""Core vs spurious features (Moayeri et al. 2022): theory, metrics, data, objective.

Known answers: the closed-form adversarial squared risk against Monte-Carlo with the exact
inner maximiser (3 standard errors) and the inner maximiser against brute-force search;
ordinary least squares at eps = 0; the optax minimiser against scipy on smooth
reformulations of the same convex problem; PGD reaching the closed-form inner maximum;
PGD adversarial training through the training loop landing on the exact minimiser of the
sample's adversarial risk; RFS = -1 / +1 for background-only / foreground-only models on
synthetic images with known masks, and 0 flipped-domain accuracy for a background-only
binary classifier.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.optimize

from advjax.analysis import spurious as sp
from advjax.analysis import tradeoff
from advjax.analysis.spurious import CoreSpuriousModel
from advjax.data import spurious as sdata
from advjax.data.synthetic import sample_core_spurious
from advjax.objectives import Forward
from advjax.objectives.regression import build_squared_at, squared_pgd

# ----------------------------------------------------------------------- regression theory


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_inner_maximum_beats_brute_force(norm):
    key = jax.random.PRNGKey(7)
    d, n, eps = 5, 16, 0.3
    w = jax.random.normal(key, (d,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, d))
    y = jax.random.normal(jax.random.fold_in(key, 2), (n,))
    u = jax.random.normal(jax.random.fold_in(key, 3), (500, n, d))

    @jax.jit
    def search(w, x, y, u):
        delta = tradeoff.worst_case_perturbation(w, x, y, norm=norm, eps=eps)
        norms = {
            "linf": jnp.max(jnp.abs(delta), 1),
            "l2": jnp.linalg.norm(delta, axis=1),
            "l1": jnp.sum(jnp.abs(delta), 1),
        }[norm]
        exact = tradeoff.adversarial_squared_loss(w, x, y, norm=norm, eps=eps)
        if norm == "linf":
            cand = eps * jnp.sign(u)
        elif norm == "l2":
            cand = eps * u / jnp.linalg.norm(u, axis=-1, keepdims=True)
        else:
            cand = eps * u / jnp.sum(jnp.abs(u), axis=-1, keepdims=True)
        losses = (y[None] - (x[None] + cand) @ w) ** 2
        return norms, (y - (x + delta) @ w) ** 2, exact, losses

    norms, attained, exact, losses = map(np.asarray, search(w, x, y, u))
    np.testing.assert_allclose(norms, eps, rtol=1e-5)
    np.testing.assert_allclose(attained, exact, rtol=1e-5)
    # Random points of the ball (including its vertices / boundary) never do better.
    assert bool(np.all(losses <= exact[None] * (1 + 1e-5) + 1e-6))
    assert float(np.max(losses, 0).min() / exact.min()) > 0.5  # the search is not vacuous


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_gaussian_risk_matches_monte_carlo_with_exact_maximiser(norm):
    model = CoreSpuriousModel(d_core=2, d_spurious=3, scale_core=1.0, scale_spurious=2.0)
    cov, c, vy = model.moments()
    params = dataclasses.asdict(model)
    x, y = sample_core_spurious(jax.random.PRNGKey(8), 100_000, **params)
    w = jnp.asarray([0.4, 0.3, 0.1, -0.05, 0.08])
    eps = 0.3

    @jax.jit
    def risks(w, x, y):
        delta = tradeoff.worst_case_perturbation(w, x, y, norm=norm, eps=eps)
        losses = (y - (x + delta) @ w) ** 2
        closed = tradeoff.gaussian_adversarial_risk(
            w, cov_xx=jnp.asarray(cov), cov_xy=jnp.asarray(c), var_y=vy, norm=norm, eps=eps
        )
        return jnp.mean(losses), jnp.std(losses), closed

    mc, std, closed = map(float, risks(w, x, y))
    se = std / math.sqrt(x.shape[0])
    assert abs(mc - closed) <= 3 * se, (mc, closed, se)


def _scipy_minimiser(cov, c, vy, norm, eps):
    """Reference: the same convex problem in smooth form, solved by scipy."""
    d = c.shape[0]
    k = math.sqrt(2 / math.pi)

    def risk_from(w, t):
        s2 = vy - 2 * w @ c + w @ cov @ w
        s = math.sqrt(max(s2, 1e-300))
        return s2 + 2 * k * eps * t * s + (eps * t) ** 2

    w0 = np.linalg.solve(cov, c)
    if norm == "linf":  # ||w||_1 with w = u - v, u, v >= 0: smooth on the orthant.
        z0 = np.concatenate([np.maximum(w0, 0), np.maximum(-w0, 0)])
        f = lambda z: risk_from(z[:d] - z[d:], z.sum())
        res = scipy.optimize.minimize(
            f,
            z0,
            method="L-BFGS-B",
            bounds=[(0, None)] * (2 * d),
            options={"ftol": 1e-15, "gtol": 1e-12},
        )
        return res.x[:d] - res.x[d:]
    if norm == "l2":
        f = lambda w: risk_from(w, np.linalg.norm(w))
        return scipy.optimize.minimize(f, w0, method="BFGS", options={"gtol": 1e-10}).x
    # ||w||_inf <= t as linear constraints.
    cons = [
        {"type": "ineq", "fun": lambda z, i=i, s=s: z[d] - s * z[i]}
        for i in range(d)
        for s in (1, -1)
    ]
    z0 = np.concatenate([w0, [np.abs(w0).max()]])
    res = scipy.optimize.minimize(
        lambda z: risk_from(z[:d], z[d]),
        z0,
        method="SLSQP",
        constraints=cons,
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.x[:d]


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_optax_minimiser_matches_scipy_and_ols_at_zero(norm):
    model = CoreSpuriousModel(d_core=2, d_spurious=2, scale_core=1.0, scale_spurious=2.0)
    cov, c, vy = model.moments()
    eps_grid = [0.0, 0.1, 0.4]
    got = np.asarray(
        tradeoff.minimize_adversarial_risk(
            cov_xx=cov, cov_xy=c, var_y=vy, norm=norm, eps_grid=eps_grid, num_steps=4000
        )
    )
    np.testing.assert_allclose(got[0], np.linalg.solve(cov, c), atol=1e-3)
    np.testing.assert_allclose(got[0], tradeoff.least_squares(cov, c), atol=1e-3)
    risk = jax.jit(
        lambda v, e: tradeoff.gaussian_adversarial_risk(
            jnp.asarray(v, jnp.float32),
            cov_xx=jnp.asarray(cov),
            cov_xy=jnp.asarray(c),
            var_y=vy,
            norm=norm,
            eps=e,
        )
    )
    for w, eps in zip(got[1:], eps_grid[1:], strict=True):
        ref = _scipy_minimiser(cov, c, vy, norm, eps)
        np.testing.assert_allclose(w, ref, atol=3e-3)
        assert float(risk(w, eps)) <= float(risk(ref, eps)) + 1e-5


def test_reliance_matches_the_reference_table():
    # METHODS.md section 3 [V-num], d_c = d_s = 1, sigma_c = 0.5, sigma_s = 1, eps 0 -> 0.4:
    # (1,1): l1 0.200 -> 0.380, l2 0.200 -> 0.295, linf flat; (1,3): linf 0.200 -> 0.322;
    # (3,1): linf 0.200 -> 0.097.
    eps = [0.0, 0.1, 0.2, 0.4]
    equal = sp.reliance_sweep(CoreSpuriousModel(), eps_grid=eps, num_steps=3000)
    np.testing.assert_allclose(equal["l1"]["reliance"][-1], 0.380, atol=2e-3)
    np.testing.assert_allclose(equal["l2"]["reliance"][-1], 0.295, atol=2e-3)
    np.testing.assert_allclose(equal["linf"]["reliance"], 0.2, atol=2e-3)
    for norm in ("l1", "l2"):
        assert np.all(np.diff(equal[norm]["reliance"]) > 0)
        # Flipping the spurious correlation hurts more as reliance grows.
        assert np.all(np.diff(equal[norm]["mse_flipped"]) > 0)
    assert equal["l2"]["reliance"][0] == pytest.approx(0.2, abs=2e-3)
    big_s = sp.reliance_sweep(
        CoreSpuriousModel(scale_spurious=3.0), eps_grid=eps, norms=("linf",), num_steps=3000
    )
    assert np.all(np.diff(big_s["linf"]["reliance"]) > 0)
    np.testing.assert_allclose(big_s["linf"]["reliance"][-1], 0.322, atol=2e-3)
    big_c = sp.reliance_sweep(
        CoreSpuriousModel(scale_core=3.0), eps_grid=eps, norms=("linf",), num_steps=3000
    )
    assert np.all(np.diff(big_c["linf"]["reliance"]) < 0)
    np.testing.assert_allclose(big_c["linf"]["reliance"][-1], 0.097, atol=2e-3)


def test_reliance_extremes_and_shifted_mse_monte_carlo():
    model = CoreSpuriousModel(d_core=2, d_spurious=2, scale_spurious=2.0)
    assert float(sp.spurious_reliance(jnp.array([1.0, -2.0, 0.0, 0.0]), model)) == 0.0
    assert float(sp.spurious_reliance(jnp.array([0.0, 0.0, 0.5, -1.0]), model)) == 1.0
    # Equal signal (|w| * scale) from both groups -> 1/2.
    assert float(sp.spurious_reliance(jnp.array([1.0, 0.0, 0.5, 0.0]), model)) == 0.5
    w = jnp.array([0.3, 0.2, 0.1, 0.05])
    params = dataclasses.asdict(model)
    for sign in (1.0, 0.0, -1.0):
        params["spurious_sign"] = sign
        x, y = sample_core_spurious(jax.random.PRNGKey(int(sign) + 5), 100_000, **params)
        err = (y - x @ w) ** 2
        mc, se = float(err.mean()), float(err.std()) / math.sqrt(x.shape[0])
        closed = float(sp.shifted_mse(w, model, spurious_sign=sign))
        assert abs(mc - closed) <= 3 * se, (sign, mc, closed)


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_pgd_reaches_the_closed_form_inner_maximum(norm):
    key = jax.random.PRNGKey(11)
    d, eps = 6, 0.4
    w = jax.random.normal(key, (d,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (128, d))
    y = jax.random.normal(jax.random.fold_in(key, 2), (128,))

    @jax.jit
    def attack(w, x, y, key):
        exact = tradeoff.adversarial_squared_loss(w, x, y, norm=norm, eps=eps, bias=0.2)
        # Two restarts: the first from x (which follows the residual's sign to the global
        # maximum), the second from a random point; the per-example best is kept.
        x_adv = squared_pgd(
            lambda a: a @ w + 0.2,
            x,
            y,
            key,
            norm=norm,
            eps=eps,
            step_size=eps / 4,
            num_steps=12,
            random_start=False,
            num_restarts=2,
        )
        got = (y - x_adv @ w - 0.2) ** 2
        delta = x_adv - x
        size = {
            "linf": jnp.max(jnp.abs(delta), 1),
            "l2": jnp.linalg.norm(delta, axis=1),
            "l1": jnp.sum(jnp.abs(delta), 1),
        }[norm]
        return got, exact, size

    got, exact, size = map(np.asarray, attack(w, x, y, jax.random.fold_in(key, 3)))
    np.testing.assert_allclose(got, exact, rtol=1e-4)
    assert bool(np.all(size <= eps * (1 + 1e-5)))


def _linear_forward(w, b):
    f = lambda params, x: (x @ params["w"] + params["b"])[:, None]
    return {"w": w, "b": b}, Forward(train=lambda p, x: (f(p, x), {}), eval=f, bounds=(-1e6, 1e6))


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_squared_at_objective_equals_closed_form_loss(norm):
    key = jax.random.PRNGKey(12)
    params, forward = _linear_forward(jnp.array([0.5, -0.2, 0.3]), jnp.array(0.1))
    x = jax.random.normal(key, (32, 3))
    y = jax.random.normal(jax.random.fold_in(key, 1), (32,))
    batch = {"x": x, "y": y}
    cfg = ml_collections.ConfigDict(
        {"name": "squared_at", "attack": {"name": "pgd", "norm": norm, "eps": 0.3, "num_steps": 10}}
    )
    loss, aux = build_squared_at(cfg).loss_fn(params, forward, batch, key, None)
    expected = jnp.mean(
        tradeoff.adversarial_squared_loss(params["w"], x, y, norm=norm, eps=0.3, bias=0.1)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(
        aux["metrics"]["mse"], jnp.mean((y - x @ params["w"] - 0.1) ** 2), rtol=1e-5
    )
    cfg.attack.eps = 0.0
    loss0, _ = build_squared_at(cfg).loss_fn(params, forward, batch, key, None)
    np.testing.assert_allclose(loss0, jnp.mean((y - x @ params["w"] - 0.1) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="train.objective.attack"):
        build_squared_at(ml_collections.ConfigDict({"name": "squared_at", "attack": {"nrm": "l2"}}))


def test_finite_sample_pgd_training_lands_on_the_exact_minimiser(tmp_path):
    from advjax import data, runs
    from advjax.configlib import load_config

    c = load_config("configs/moayeri_linear.py:l1,smoke")
    c.data.num_train = 2000
    c.train.batch_size = 2000  # full batch: the loop then minimises the sample risk
    c.train.num_epochs = 400.0
    c.train.optimizer.learning_rate = 0.05
    c.train.val_examples = 0
    c.train.log_every_steps = 1000
    c.checkpoint.every_steps = 1000
    c.train.objective.attack.eps = 0.3
    dataset = data.load_dataset(c.data)
    model = runs.train_or_load(c, str(tmp_path / "run"), dataset=dataset)
    dense = model.variables["params"]["Dense_0"]
    w, b = np.asarray(dense["kernel"])[:, 0], float(dense["bias"][0])
    w_ref, b_ref = tradeoff.minimize_empirical_adversarial_risk(
        dataset.train_x, dataset.train_y, norm="l1", eps=0.3
    )
    np.testing.assert_allclose(w, w_ref, atol=2e-3)
    assert b == pytest.approx(float(b_ref), abs=2e-3)
    # And the sample minimiser is the population one up to sampling error (n = 2000).
    cov, cxy, vy = CoreSpuriousModel().moments()
    w_pop = tradeoff.minimize_adversarial_risk(
        cov_xx=cov, cov_xy=cxy, var_y=vy, norm="l1", eps_grid=[0.3], num_steps=3000
    )[0]
    np.testing.assert_allclose(w, w_pop, atol=0.05)


# ------------------------------------------------------------------------ image benchmark


def _bars(labels: np.ndarray) -> np.ndarray:
    """Synthetic objects: class 0 = horizontal bar, class 1 = vertical bar (28 x 28)."""
    img = np.zeros((len(labels), 28, 28), np.float32)
    img[labels == 0, 12:16, 4:24] = 1.0
    img[labels == 1, 4:24, 12:16] = 1.0
    return img


def _background_only(x: jax.Array) -> jax.Array:
    """Reads one corner pixel (never covered by an object): nearest class colour."""
    pix = x[:, 0, 0, :]
    return -jnp.sum((pix[:, None, :] - jnp.asarray(sdata.PALETTE[:2])[None]) ** 2, axis=-1)


def _foreground_only(x: jax.Array) -> jax.Array:
    """Class 0 iff most pixels of the horizontal bar (outside the crossing) are white."""
    region = jnp.concatenate([x[:, 12:16, 4:12, :], x[:, 12:16, 16:24, :]], axis=2)
    white = jnp.mean(jnp.min(region, axis=-1) > 0.95, axis=(1, 2))
    return jnp.stack([white - 0.5, jnp.zeros_like(white)], axis=-1)


@pytest.fixture(scope="module")
def bar_domains():
    labels = np.tile([0, 1], 100).astype(np.int32)
    return {
        d: sdata.make_split(
            _bars(labels), labels, domain=d, num_classes=2, rho=0.9, background="colour", seed=3
        )
        for d in sdata.DOMAINS
    }


@pytest.fixture(scope="module")
def predictors():
    """Compiled predictors of both models, shared by the tests (`sp.make_predictors`)."""
    return {f: sp.make_predictors(f) for f in (_background_only, _foreground_only)}


def test_rfs_is_minus_one_for_background_and_plus_one_for_foreground(bar_domains, predictors):
    same = bar_domains["same"]
    key = jax.random.PRNGKey(0)
    bg, fg = (
        sp.noise_accuracies(
            f, same["x"], same["y"], same["mask"], key, sigma=0.5, chunk_size=64,
            predictors=predictors[f],
        )
        for f in (_background_only, _foreground_only)
    )  # fmt: skip
    assert bg["clean"] == 1.0 and fg["clean"] == 1.0
    assert bg["fg_noise"] == 1.0 and bg["bg_noise"] < 1.0
    assert fg["bg_noise"] == 1.0 and fg["fg_noise"] < 1.0
    assert bg["rfs"] == pytest.approx(-1.0)
    assert fg["rfs"] == pytest.approx(1.0)
    # Region noise touches only its region and stays in the box.
    noisy_bg = np.asarray(
        jax.jit(functools.partial(sp.region_noise, sigma=0.5, region="bg"))(
            jnp.asarray(same["x"]), jnp.asarray(same["mask"]), key
        )
    )
    m = same["mask"]
    np.testing.assert_array_equal(noisy_bg[m], same["x"][m])
    assert float(np.mean(np.abs(noisy_bg - same["x"])[~m])) > 0.1
    assert float(noisy_bg.min()) >= 0.0 and float(noisy_bg.max()) <= 1.0
    assert float(sp.relative_foreground_sensitivity(0.8, 0.8)) == 0.0
    assert float(sp.relative_foreground_sensitivity(0.6, 0.9)) == pytest.approx(0.3 / (2 * 0.25))


def test_background_classifier_fails_on_flipped_domain(bar_domains, predictors):
    def predict(model, x):
        return sp.predict(model, x, chunk_size=64, predictors=predictors[model])

    acc = {
        d: float(np.mean(predict(_background_only, v["x"]) == v["y"]))
        for d, v in bar_domains.items()
    }
    assert acc["same"] == 1.0
    assert acc["flipped"] == 0.0
    assert 0.35 < acc["random"] < 0.65
    assert sp.background_gap(acc["same"], acc["random"]) == pytest.approx(
        acc["same"] - acc["random"]
    )
    fg = {
        d: float(np.mean(predict(_foreground_only, v["x"]) == v["y"]))
        for d, v in bar_domains.items()
    }
    assert fg == {"same": 1.0, "random": 1.0, "flipped": 1.0}
    rnd = bar_domains["random"]
    correct = predict(_background_only, rnd["x"]) == rnd["y"]
    worst, per = sp.worst_group_accuracy(correct, rnd["y"] * 2 + rnd["bg"])
    # Groups where background and label disagree are always wrong for this classifier.
    assert worst == 0.0 and per[0 * 2 + 0] == 1.0 and per[0 * 2 + 1] == 0.0


def test_benchmark_composition_masks_and_correlation(bar_domains):
    labels = np.tile(np.arange(4), 1000).astype(np.int32)
    objs = np.zeros((len(labels), 8, 8), np.float32)
    objs[:, 3:5, 3:5] = 0.7
    train = sdata.make_split(
        objs, labels, domain="train", num_classes=4, rho=0.8, background="texture", seed=0
    )
    agree = float(np.mean(train["bg"] == labels))
    assert abs(agree - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / len(labels))
    assert np.all(train["bg"][train["bg"] != labels] < 4)
    assert train["x"].shape == (len(labels), 8, 8, 3) and train["x"].dtype == np.float32
    assert np.array_equal(train["mask"], objs > 0)
    assert 0.0 <= train["x"].min() and train["x"].max() <= 1.0
    # Object pixels are the alpha blend of white over the background.
    same = bar_domains["same"]
    m = same["mask"]
    np.testing.assert_allclose(same["x"][m], 1.0)
    flipped = bar_domains["flipped"]
    assert np.all(flipped["bg"] == 1 - flipped["y"])
    # Outside the mask the image is a flat class colour (colour backgrounds).
    outside = same["x"][0][~m[0]]
    np.testing.assert_allclose(outside, np.broadcast_to(outside[0], outside.shape), atol=1e-6)


def test_load_spurious_relabels_classes_and_builds_domains():
    from advjax.data import DATA_SOURCES, Dataset, DatasetInfo

    rng = np.random.default_rng(0)

    def fake_base(cfg):
        y_tr, y_te = (
            rng.integers(0, 10, 400).astype(np.int32),
            rng.integers(0, 10, 200).astype(np.int32),
        )
        x_tr = np.zeros((400, 12, 12, 1), np.float32)
        x_te = np.zeros((200, 12, 12, 1), np.float32)
        x_tr[:, 4:8, 4:8] = 1.0
        x_te[:, 4:8, 4:8] = 1.0
        return Dataset(DatasetInfo("fake", (12, 12, 1), 10), x_tr, y_tr, x_te, y_te)

    DATA_SOURCES.register("fake_objects", fake_base)
    try:
        cfg = ml_collections.ConfigDict(
            {
                "name": "spurious",
                "base": "fake_objects",
                "classes": (7, 2),
                "rho": 1.0,
                "num_train": 50,
                "num_test": 30,
                "seed": 1,
                "test_domain": "flipped",
            }
        )
        bench = sdata.load_spurious_benchmark(cfg)
    finally:
        DATA_SOURCES._entries.pop("fake_objects", None)
        DATA_SOURCES._cache.pop("fake_objects", None)
    ds = bench.dataset
    assert ds.info.num_classes == 2 and ds.info.input_shape == (12, 12, 3)
    assert ds.num_train == 50 and ds.num_test == 30
    assert set(np.unique(ds.train_y)) <= {0, 1}
    assert np.array_equal(bench.train_bg, ds.train_y)  # rho = 1
    assert np.array_equal(bench.domains["flipped"]["bg"], 1 - ds.test_y)
    np.testing.assert_array_equal(ds.test_x, bench.domains["flipped"]["x"])
    with pytest.raises(ValueError, match="data.test_domain"):
        sdata.load_spurious_benchmark(
            ml_collections.ConfigDict({"name": "spurious", "test_domain": "odd"})
        )


@pytest.mark.slow
def test_notebook_runs(run_notebook):
    nb = run_notebook("spurious.ipynb")
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "RFS background-only model: -1.000" in text
    assert "RFS foreground-only model: 1.000" in text
    # Claim (i) is checked per scale pair and fails for l_2 at lambda_c:lambda_s = 3:1.
    assert "claim (i) holds at every pair: False; failing: ['3:1 l2']" in text
    assert "claim (ii) holds at every pair: True" in text
    assert "all theory claims hold: False" in text
