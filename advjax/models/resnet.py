"""Residual networks for 32x32 inputs: PreAct ResNet-18 and WideResNet.

BatchNorm uses running averages unless ``train=True``; only training steps pass
``train=True`` and collect the updated ``batch_stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models.layers import Conv


def _norm(train: bool):
    return partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings")."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = _norm(train)
        out = nn.relu(norm()(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = Conv(self.features, (1, 1), strides=self.stride, use_bias=False)(out)
        out = Conv(self.features, (3, 3), strides=self.stride, padding=1, use_bias=False)(out)
        out = nn.relu(norm()(out))
        out = Conv(self.features, (3, 3), padding=1, use_bias=False)(out)
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 as used by Wong et al. 2020 for CIFAR-10.

    ``mean``/``std`` (per channel) normalise inputs inside the model, so attacks still
    work in [0, 1] pixel space; empty means no normalisation.
    """

    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512)
    mean: Sequence[float] = ()
    std: Sequence[float] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.mean:
            x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False)(x)
        for stage, width in enumerate(self.widths):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                x = PreActBlock(width, stride)(x, train)
        x = nn.relu(_norm(train)()(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class WideBlock(nn.Module):
    """Pre-activation wide basic block with optional dropout (Zagoruyko & Komodakis)."""

    features: int
    stride: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = _norm(train)
        out = nn.relu(norm()(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = Conv(self.features, (1, 1), strides=self.stride, use_bias=False)(out)
        out = Conv(self.features, (3, 3), strides=self.stride, padding=1, use_bias=False)(out)
        out = nn.relu(norm()(out))
        if self.dropout > 0:
            out = nn.Dropout(self.dropout, deterministic=not train)(out)
        out = Conv(self.features, (3, 3), padding=1, use_bias=False)(out)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width (depth = 6n + 4); WRN-28-10 and WRN-34-10 are the usual ones."""

    num_classes: int
    depth: int = 28
    width: int = 10
    dropout: float = 0.0
    mean: Sequence[float] = ()
    std: Sequence[float] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"config key 'model.depth': {self.depth} is not 6n + 4")
        n = (self.depth - 4) // 6
        if self.mean:
            x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        x = Conv(16, (3, 3), padding=1, use_bias=False)(x)
        for stage, base in enumerate((16, 32, 64)):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                x = WideBlock(base * self.width, stride, self.dropout)(x, train)
        x = nn.relu(_norm(train)()(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
