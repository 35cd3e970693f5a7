"""Smoke-size tests of the small-data sweep and the robust-model visuals (Tsipras et al.)."""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from advjax import data, runs
from advjax.configlib import load_config
from advjax.experiments import small_data, tradeoff_visuals


def test_cell_config_sets_size_steps_and_objective():
    config = load_config("configs/small_data.py:cpu")
    an = config.analysis
    small = small_data.cell_config(config, size=100, eps=0.0, seed=3)
    assert small.data.num_train == 100 and small.seed == 3 and small.data.seed == 3
    assert small.train.batch_size == 100
    assert small.train.num_steps == an.min_steps  # 10 epochs of 1 step < min_steps
    assert small.train.objective.name == "standard"
    big = small_data.cell_config(config, size=5000, eps=2.0, seed=0)
    assert big.train.num_steps == math.ceil(an.epochs * 5000 / 100)
    attack = big.train.objective.attack
    assert big.train.objective.name == "pgd_at" and attack.norm == "l2" and attack.eps == 2.0
    assert attack.step_size == pytest.approx(2.5 * 2.0 / an.attack_steps)
    tiny = small_data.cell_config(config, size=40, eps=1.0, seed=0)
    assert tiny.train.batch_size == 40  # capped at the training-set size


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("small_data"))
    config = load_config("configs/small_data.py:smoke")
    with config.unlocked():
        config.data.num_test = 100
        config.analysis.sizes = (40,)
        config.analysis.eps_train = (0.0, 1.0)
        config.analysis.min_steps = 4
        config.analysis.num_robust_eval = 50
    report = small_data.run(config, workdir)
    return config, workdir, report


def test_small_data_report_matches_a_direct_evaluation(sweep):
    config, workdir, report = sweep
    with open(os.path.join(workdir, "small_data.json")) as f:
        on_disk = json.load(f)
    assert on_disk["sizes"] == [40] and on_disk["eps_train"] == [0.0, 1.0]
    for name in ("small_data_accuracy.png", "small_data_robust.png"):
        assert os.path.getsize(os.path.join(workdir, "figures", name)) > 0
    test = data.load_dataset(config.data)
    for cell in on_disk["cells"]:
        model = runs.load_trained(os.path.join(workdir, cell["workdir"]))
        assert model.step == cell["train_steps"] == 4
        pred = np.asarray(jnp.argmax(model.logits_fn(jnp.asarray(test.test_x)), -1))
        assert cell["standard_accuracy"] == pytest.approx(np.mean(pred == test.test_y))
        assert 0.0 <= cell["robust_accuracy"]["1"] <= 1.0
    got = on_disk["standard_accuracy_mean"]
    assert on_disk["at_minus_standard"]["1"][0] == pytest.approx(got["1"][0] - got["0"][0])


def test_small_data_rerun_restores_instead_of_retraining(sweep):
    config, workdir, report = sweep
    again = small_data.run(config, workdir)
    assert again["standard_accuracy_mean"] == report["standard_accuracy_mean"]
    for cell in again["cells"]:
        records = runs.read_metrics(os.path.join(workdir, cell["workdir"]))
        assert max(r["step"] for r in records) == 4


def test_visuals_on_the_sweep_models(sweep, tmp_path):
    _, sweep_dir, _ = sweep
    config = load_config("configs/tradeoff_visuals.py:smoke")
    with config.unlocked():
        config.data.num_test = 100
        config.analysis.standard_workdir = os.path.join(sweep_dir, "runs", "n40_eps0_s0")
        config.analysis.robust_workdir = os.path.join(sweep_dir, "runs", "n40_eps1_s0")
    report = tradeoff_visuals.run(config, str(tmp_path))
    names = [
        "gradients.png",
        "adversarial_untargeted.png",
        "adversarial_targeted_standard.png",
        "adversarial_targeted_robust.png",
        "interpolation_standard.png",
        "interpolation_robust.png",
    ]
    for name in names:
        assert os.path.getsize(tmp_path / "figures" / name) > 0
    an = config.analysis
    test = data.load_dataset(config.data)
    x = jnp.asarray(test.test_x[report["test_indices"]])
    assert report["labels"] == list(range(an.num_images))  # one image per class in turn
    for name, workdir in (("standard", an.standard_workdir), ("robust", an.robust_workdir)):
        numbers = report["models"][name]
        clean = np.asarray(jnp.argmax(runs.load_trained(workdir).logits_fn(x), -1))
        path = np.asarray(numbers["interpolation_predictions"])
        # The path starts at the clean image and ends at the untargeted adversarial one.
        np.testing.assert_array_equal(path[:, 0], clean)
        np.testing.assert_array_equal(path[:, -1], numbers["untargeted_predictions"])
        assert numbers["untargeted_l2_norm_max"] <= an.eps * (1 + 1e-5)
        assert 0.0 <= numbers["targeted_closer_to_target_mean"] <= 1.0


def test_interpolation_and_proximity_helpers():
    x = jnp.full((2, 3, 3, 1), 0.5)
    delta = jnp.ones_like(x) * jnp.array([0.2, -0.9])[:, None, None, None]
    path = tradeoff_visuals.interpolation_path(x, delta, 5, (0.0, 1.0))
    np.testing.assert_allclose(path[:, 0], x)
    np.testing.assert_allclose(path[0, -1], x[0] + 0.2)
    np.testing.assert_allclose(path[1, -1], jnp.zeros_like(x[1]))  # clipped to the box
    np.testing.assert_allclose(path[0, 2], x[0] + 0.1)

    means = np.stack([np.zeros((2, 2, 1)), np.ones((2, 2, 1))])
    imgs = np.stack([np.full((2, 2, 1), 0.8), np.full((2, 2, 1), 0.3)])
    closer = tradeoff_visuals.closer_to_target_mean(imgs, np.array([0, 0]), np.array([1, 1]), means)
    np.testing.assert_array_equal(closer, [True, False])

    rng = np.random.default_rng(0)
    img = rng.uniform(size=(3, 5, 5, 1))
    np.testing.assert_allclose(tradeoff_visuals.gradient_image_correlation(-2 * img, img), 1.0)

    y = np.array([3, 0, 1, 0, 2, 1])
    np.testing.assert_array_equal(tradeoff_visuals.pick_images(np.zeros(6), y, 4, 4), [1, 2, 4, 0])
