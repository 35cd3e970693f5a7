"""Model registry: shapes, parameter counts, BatchNorm only updating in training."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import models
from advjax.data import DatasetInfo
from advjax.models import cnn

MNIST = DatasetInfo("mnist", (28, 28, 1), 10)
CIFAR = DatasetInfo("cifar", (32, 32, 3), 10)


def build(name, info, **kw):
    module = models.build_model(ml_collections.ConfigDict(dict(name=name, **kw)), info)
    return module, models.init_variables(module, info, jax.random.key(0))


def param_count(name, info, **kw):
    """The number of parameters `build` initialises, from their shapes (nothing compiled)."""
    module = models.build_model(ml_collections.ConfigDict(dict(name=name, **kw)), info)
    init = jax.eval_shape(lambda key: models.init_variables(module, info, key), jax.random.key(0))
    return models.count_params(init["params"])


def test_madry_cnn_has_the_published_parameter_count():
    # conv 5x5x1x32 + conv 5x5x32x64 + fc 3136x1024 + fc 1024x10, with biases.
    expected = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 1024 + 1024) + (1024 * 10 + 10)
    assert param_count("madry_cnn", MNIST) == expected == 3_274_634


@pytest.mark.parametrize(
    "name,info,kw",
    [
        ("linear", MNIST, {}),
        ("mlp", MNIST, {"hidden": (32,)}),
        ("small_cnn", MNIST, {}),
        ("preact_resnet18", CIFAR, {"widths": (8, 8, 8, 8)}),
        ("wide_resnet", CIFAR, {"depth": 10, "width": 1}),
    ],
)
def test_output_shapes(name, info, kw):
    module, variables = build(name, info, **kw)
    x = jnp.zeros((3, *info.input_shape))
    assert jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x).shape == (3, 10)


def test_small_cnn_parameter_count_matches_its_layers():
    expected = (16 * 16 + 16) + (16 * 16 * 32 + 32) + (7 * 7 * 32 * 100 + 100) + (100 * 10 + 10)
    assert param_count("small_cnn", MNIST) == expected


def test_preact_resnet18_parameter_count():
    # Conv/linear weights of PreAct ResNet-18 (Wong et al. 2020) plus BatchNorm scale/bias.
    assert param_count("preact_resnet18", CIFAR) == 11_172_170


def test_batchnorm_statistics_change_only_in_training():
    module, variables = build("wide_resnet", CIFAR, depth=10, width=1)
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))

    @jax.jit
    def run(variables, x):  # one compiled program for the eval and training passes
        _, evaluated = module.apply(variables, x, train=False, mutable=["batch_stats"])
        _, trained = module.apply(variables, x, train=True, mutable=["batch_stats"])
        # In eval mode predictions do not depend on the rest of the batch.
        alone = module.apply(variables, x[:1], train=False)
        together = module.apply(variables, x, train=False)[:1]
        return evaluated, trained, alone, together

    evaluated, trained, alone, together = run(variables, x)
    jax.tree.map(np.testing.assert_array_equal, evaluated["batch_stats"], variables["batch_stats"])
    changed = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
            trained["batch_stats"],
            variables["batch_stats"],
        )
    )
    assert all(changed)
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)


def test_unknown_model_and_field_are_named():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*allowed"):
        build("resnet9000", MNIST)
    with pytest.raises(ValueError, match="model.hidden_units"):
        build("mlp", MNIST, hidden_units=3)


class PublishedMadryCNN(nn.Module):
    """Madry et al.'s MNIST network in the published order, with flax's own layers."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
        w_init = nn.initializers.truncated_normal(stddev=0.1)
        b_init = nn.initializers.constant(0.1)
        for features in (32, 64):
            x = nn.Conv(features, (5, 5), padding="SAME", kernel_init=w_init, bias_init=b_init)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(1024, kernel_init=w_init, bias_init=b_init)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, kernel_init=w_init, bias_init=b_init)(x)


# The modules built on advjax.models.layers; models elsewhere (imported architectures)
# keep their own layers.
OWN_MODULES = ("advjax.models.cnn", "advjax.models.resnet", "advjax.models.simple")


@pytest.mark.parametrize(
    "name,info,kw",
    [
        ("linear", MNIST, {}),
        ("mlp", MNIST, {"hidden": (32,)}),
        ("madry_cnn", MNIST, {}),
        ("small_cnn", MNIST, {}),
        ("preact_resnet18", CIFAR, {"widths": (8, 8, 8, 8)}),
        ("wide_resnet", CIFAR, {"depth": 10, "width": 1}),
    ],
)
def test_models_equal_their_flax_conv_versions(name, info, kw, monkeypatch):
    # Every registered model, rebuilt with flax's own nn.Conv and nn.max_pool in place of
    # advjax.models.layers: the same variables tree (names, shapes, initial values, so
    # checkpoints written before the layers existed still load), logits and input
    # gradients. The Madry CNN's reference is the published order (conv -> ReLU ->
    # max-pool), which advjax computes as conv -> max-pool -> bias -> ReLU.
    own = {n for n in models.MODELS.names() if models.MODELS.get(n).__module__ in OWN_MODULES}
    assert own == {"linear", "mlp", "madry_cnn", "small_cnn", "preact_resnet18", "wide_resnet"}
    module, variables = build(name, info, **kw)
    x = jax.random.uniform(jax.random.key(2), (3, *info.input_shape))
    # An all-zero band, like MNIST's background: windows of equal maxima.
    x = x.at[:, : info.input_shape[0] // 3].set(0.0)

    def loss(m, variables):
        return lambda v: jnp.sum(jnp.sin(m.apply(variables, v, train=False)))

    def logits_and_gradient(m):
        # A new compiled function per model: a module rebuilt with flax's layer compares
        # equal to advjax's (same fields), so a cached trace would run advjax's again.
        return jax.jit(lambda v, x: (m.apply(v, x, train=False), jax.grad(loss(m, v))(x)))

    # advjax's model first: its modules look up `Conv` when they run, so this comes
    # before the layer is swapped for flax's below.
    logits, got = logits_and_gradient(module)(variables, x)
    import flax.linen as nn

    from advjax.models import resnet

    if name == "madry_cnn":
        flax_module = PublishedMadryCNN(info.num_classes)
    else:
        for mod in (cnn, resnet):
            monkeypatch.setattr(mod, "Conv", nn.Conv)
        flax_module = models.build_model(ml_collections.ConfigDict(dict(name=name, **kw)), info)
    # Initialised afresh (`models.init_variables` caches its program by module, and the
    # rebuilt module equals advjax's), with the key and dummy input it uses.
    dummy = jnp.zeros((1, *info.input_shape), jnp.float32)
    flax_variables = jax.jit(
        lambda key: flax_module.init({"params": key, "dropout": key}, dummy, train=False)
    )(jax.random.key(0))
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(flax_variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    flax_logits, want = logits_and_gradient(flax_module)(flax_variables, x)
    np.testing.assert_allclose(logits, flax_logits, rtol=1e-5, atol=1e-5)
    # advjax runs first layers as sums over their taps: the same products as flax's
    # convolution, added in another order, so the two agree to float32 rounding (on the
    # gradient's scale), and advjax is no further from the published model's gradient
    # computed in float64 than twice flax's own float32 rounding.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    with jax.enable_x64(True):

        @jax.jit
        def exact_gradient(variables, x):
            variables64 = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
            return jax.grad(loss(flax_module, variables64))(x.astype(jnp.float64))

        exact = np.asarray(exact_gradient(flax_variables, x))
    ours, theirs = np.abs(got - exact).max(), np.abs(want - exact).max()
    assert ours <= 2 * theirs + 1e-7, (ours, theirs)
