"""Linear and MLP models (vector or image inputs are flattened)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class Linear(nn.Module):
    """Affine map of the flattened input: logits (or one regression output)."""

    num_classes: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, use_bias=self.use_bias)(x)


class MLP(nn.Module):
    """ReLU multilayer perceptron on the flattened input."""

    num_classes: int
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)
