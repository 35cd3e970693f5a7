"""The CIFAR networks of RobustBench whose layouts advjax's own models do not cover.

* `DMWideResNet`: the WideResNet of Gowal et al. 2020 ("Uncovering the limits of
  adversarial training") and Rebuffi et al. 2021, used for RobustBench's WRN-28-10,
  WRN-34-10 and WRN-70-16 entries. It differs from `advjax.models.resnet.WideResNet` in
  three ways that change the logits: TensorFlow "SAME" padding for strided 3x3 convs
  (zero rows/columns only at the bottom/right), an activation option (``swish`` =
  SiLU, x * sigmoid(x), for the Gowal/Rebuffi models; ``relu``) and input
  normalisation inside the model (CIFAR-10's mean and std by default).
* `PreActResNet`: RobustBench's PreAct ResNet with its two switches, ``out_shortcut``
  (projection shortcut fed by the activated input, as in Wong et al. 2020's
  ``PreActBlockV2``, or by the raw input) and ``bn_before_fc`` (a final BatchNorm +
  ReLU before pooling).

RobustBench's plain WideResNet (Carmon et al. 2019, Zhang et al. 2019, Rice et al.
2020: ReLU, PyTorch padding) is `advjax.models.resnet.WideResNet` with ``mean``/``std``.
Submodule names follow the PyTorch attribute names so that
`advjax.models.torch_import` maps checkpoints one to one. BatchNorm uses running
averages unless ``train=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "swish": nn.silu,
    "silu": nn.silu,
}

# TensorFlow's "SAME" for a 3x3 kernel on even-sized inputs: stride 1 pads one pixel on
# each side, stride 2 only after (bottom/right), as DeepMind's PyTorch port pads by hand.
_SAME_3X3 = {1: ((1, 1), (1, 1)), 2: ((0, 1), (0, 1))}


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(
            f"config key 'model.activation': unknown activation {name!r}; "
            f"allowed: {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name]


def _normalise(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    if not mean:
        return x
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


class DMBlock(nn.Module):
    """Pre-activation wide block of Gowal et al. 2020 with "SAME" padding."""

    features: int
    stride: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = _activation(self.activation)
        conv = partial(nn.Conv, use_bias=False)
        # The reference adds a projection only when the width changes (its strided
        # blocks always change width), and then feeds it the activated input.
        has_shortcut = x.shape[-1] != self.features
        out = act(_batch_norm(train, "batchnorm_0")(x))
        shortcut = out if has_shortcut else x
        if self.stride not in _SAME_3X3:
            raise ValueError(f"DMBlock: unsupported stride {self.stride}")
        y = conv(
            self.features,
            (3, 3),
            strides=self.stride,
            padding=_SAME_3X3[self.stride],
            name="conv_0",
        )(out)
        y = act(_batch_norm(train, "batchnorm_1")(y))
        y = conv(self.features, (3, 3), padding=1, name="conv_1")(y)
        if has_shortcut:
            shortcut = conv(self.features, (1, 1), strides=self.stride, name="shortcut")(shortcut)
        return y + shortcut


class DMWideResNet(nn.Module):
    """WRN-depth-width of Gowal et al. 2020 (RobustBench ``DMWideResNet``).

    RobustBench's Gowal2020Uncovering_70_16 and Rebuffi2021Fixing_70_16 are
    ``depth=70, width=16, activation="swish"``; the 28-10 and 34-10 entries likewise.
    Block ``j`` of group ``g`` is the submodule ``group{g}_block{j}``.
    """

    num_classes: int = 10
    depth: int = 28
    width: int = 10
    activation: str = "swish"
    mean: Sequence[float] = CIFAR10_MEAN
    std: Sequence[float] = CIFAR10_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"config key 'model.depth': {self.depth} is not 6n + 4")
        num_blocks = (self.depth - 4) // 6
        x = _normalise(x, self.mean, self.std)
        x = nn.Conv(16, (3, 3), padding=1, use_bias=False, name="init_conv")(x)
        for group, base in enumerate((16, 32, 64)):
            for block in range(num_blocks):
                stride = 2 if group > 0 and block == 0 else 1
                x = DMBlock(
                    base * self.width, stride, self.activation, name=f"group{group}_block{block}"
                )(x, train)
        x = _activation(self.activation)(_batch_norm(train, "batchnorm")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)


class PreActBlock(nn.Module):
    """RobustBench's pre-activation basic block (``PreActBlock`` / ``PreActBlockV2``)."""

    features: int
    stride: int = 1
    out_shortcut: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False)
        out = nn.relu(_batch_norm(train, "bn1")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, (1, 1), strides=self.stride, name="shortcut")(
                out if self.out_shortcut else x
            )
        out = conv(self.features, (3, 3), strides=self.stride, padding=1, name="conv1")(out)
        out = nn.relu(_batch_norm(train, "bn2")(out))
        out = conv(self.features, (3, 3), padding=1, name="conv2")(out)
        return out + shortcut


class PreActResNet(nn.Module):
    """RobustBench's ``PreActResNet`` (PreAct ResNet-18 by default).

    ``out_shortcut=False, bn_before_fc=False``: Wong et al. 2020 and Andriushchenko &
    Flammarion 2020 as RobustBench defines them. ``out_shortcut=True,
    bn_before_fc=True``: Rice et al. 2020 (l_2) and Kireev et al. 2021, which is also
    the layout of `advjax.models.resnet.PreActResNet18`.
    """

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    out_shortcut: bool = False
    bn_before_fc: bool = False
    mean: Sequence[float] = ()
    std: Sequence[float] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _normalise(x, self.mean, self.std)
        x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, name="conv1")(x)
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for block in range(size):
                stride = 2 if stage > 0 and block == 0 else 1
                x = PreActBlock(width, stride, self.out_shortcut, name=f"layer{stage + 1}_{block}")(
                    x, train
                )
        if self.bn_before_fc:
            x = nn.relu(_batch_norm(train, "bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="linear")(x)
