"""ResNet-50 in torchvision's layout (He et al. 2016, "v1.5": stride on the 3x3 conv).

The layout of the ImageNet models of the `robustness` library (Engstrom et al. 2019)
that Moayeri et al. analyse, so their PyTorch checkpoints convert one to one
(`advjax.models.torch_import`). Submodules carry torchvision's names (``conv1``,
``layer3_2``, ``downsample_conv``, ``fc``). Inputs are NHWC pixels in [0, 1]; ``mean``
and ``std`` normalise inside the model (ImageNet's by default) so attacks work in pixel
space. BatchNorm uses running averages unless ``train=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    # torch's BatchNorm2d: eps 1e-5, running averages with momentum 0.1.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with a projection shortcut when needed."""

    width: int
    stride: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False)
        out = conv(self.width, (1, 1), name="conv1")(x)
        out = nn.relu(_batch_norm(train, "bn1")(out))
        out = conv(self.width, (3, 3), strides=self.stride, padding=1, name="conv2")(out)
        out = nn.relu(_batch_norm(train, "bn2")(out))
        out = conv(self.width * self.expansion, (1, 1), name="conv3")(out)
        out = _batch_norm(train, "bn3")(out)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.width * self.expansion:
            shortcut = conv(
                self.width * self.expansion, (1, 1), strides=self.stride, name="downsample_conv"
            )(x)
            shortcut = _batch_norm(train, "downsample_bn")(shortcut)
        return nn.relu(out + shortcut)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 (``stage_sizes`` (3, 4, 6, 3), base ``width`` 64).

    ``stage_sizes`` and ``width`` exist so tests can build a small network of the same
    layout; ``mean``/``std`` empty means no input normalisation.
    """

    num_classes: int = 1000
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.mean:
            x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        x = nn.Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False, name="conv1")(x)
        x = nn.relu(_batch_norm(train, "bn1")(x))
        # torch pads max pooling with -inf, as flax does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, size in enumerate(self.stage_sizes):
            for block in range(size):
                stride = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(self.width * 2**stage, stride, name=f"layer{stage + 1}_{block}")(
                    x, train
                )
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)
