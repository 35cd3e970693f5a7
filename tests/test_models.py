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


def test_madry_cnn_has_the_published_parameter_count():
    # conv 5x5x1x32 + conv 5x5x32x64 + fc 3136x1024 + fc 1024x10, with biases.
    expected = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 1024 + 1024) + (1024 * 10 + 10)
    _, variables = build("madry_cnn", MNIST)
    assert models.count_params(variables["params"]) == expected == 3_274_634


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
    assert module.apply(variables, x, train=False).shape == (3, 10)


def test_small_cnn_parameter_count_matches_its_layers():
    _, variables = build("small_cnn", MNIST)
    expected = (16 * 16 + 16) + (16 * 16 * 32 + 32) + (7 * 7 * 32 * 100 + 100) + (100 * 10 + 10)
    assert models.count_params(variables["params"]) == expected


def test_preact_resnet18_parameter_count():
    # Conv/linear weights of PreAct ResNet-18 (Wong et al. 2020) plus BatchNorm scale/bias.
    _, variables = build("preact_resnet18", CIFAR)
    assert models.count_params(variables["params"]) == 11_172_170


def test_batchnorm_statistics_change_only_in_training():
    module, variables = build("wide_resnet", CIFAR, depth=10, width=1)
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    _, updated = module.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, updated["batch_stats"], variables["batch_stats"])
    _, updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), updated["batch_stats"], variables["batch_stats"]
        )
    )
    assert all(changed)
    # In eval mode predictions do not depend on the rest of the batch.
    alone = module.apply(variables, x[:1], train=False)
    together = module.apply(variables, x, train=False)[:1]
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
    import flax.linen as nn

    from advjax.models import resnet

    if name == "madry_cnn":
        flax_module = PublishedMadryCNN(info.num_classes)
        flax_variables = models.init_variables(flax_module, info, jax.random.key(0))
    else:
        for mod in (cnn, resnet):
            monkeypatch.setattr(mod, "Conv", nn.Conv)
        flax_module, flax_variables = build(name, info, **kw)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(flax_variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jax.random.uniform(jax.random.key(2), (3, *info.input_shape))
    # An all-zero band, like MNIST's background: windows of equal maxima.
    x = x.at[:, : info.input_shape[0] // 3].set(0.0)

    def loss(m):
        return lambda v: jnp.sum(jnp.sin(m.apply(flax_variables, v, train=False)))

    np.testing.assert_allclose(
        module.apply(flax_variables, x, train=False),
        flax_module.apply(flax_variables, x, train=False),
        rtol=1e-5,
        atol=1e-5,
    )
    got, want = jax.grad(loss(module))(x), jax.grad(loss(flax_module))(x)
    # advjax runs first layers as sums over their taps: the same products as flax's
    # convolution, added in another order, so the two agree to float32 rounding (on the
    # gradient's scale), and advjax is no further from the published model's gradient
    # computed in float64 than twice flax's own float32 rounding.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    with jax.enable_x64(True):
        variables64 = jax.tree.map(lambda a: a.astype(jnp.float64), flax_variables)
        exact = jax.grad(
            lambda v: jnp.sum(jnp.sin(flax_module.apply(variables64, v, train=False)))
        )(x.astype(jnp.float64))
    exact = np.asarray(exact)
    ours, theirs = np.abs(got - exact).max(), np.abs(want - exact).max()
    assert ours <= 2 * theirs + 1e-7, (ours, theirs)
