"""Convolutional networks for MNIST-sized inputs."""

from __future__ import annotations

import flax.linen as nn
import jax

from advjax.models.layers import Conv


class MadryCNN(nn.Module):
    """The MNIST network of Madry et al. 2018 (mnist_challenge ``model.py``).

    conv5x5-32 -> maxpool2 -> conv5x5-64 -> maxpool2 -> fc1024 -> fc; ReLU; SAME
    padding; truncated-normal(0.1) weights and 0.1 biases. 3,274,634 parameters on
    28x28x1 inputs with 10 classes.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        w_init = nn.initializers.truncated_normal(stddev=0.1)
        b_init = nn.initializers.constant(0.1)
        # Each convolution max-pools before its bias and ReLU (`Conv.pool_window`): the
        # same values as conv -> ReLU -> pool, with a quarter of the elementwise work.
        for features in (32, 64):
            conv = Conv(features, (5, 5), padding="SAME", kernel_init=w_init,
                        bias_init=b_init, pool_window=(2, 2))  # fmt: skip
            x = nn.relu(conv(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(1024, kernel_init=w_init, bias_init=b_init)(x))
        return nn.Dense(self.num_classes, kernel_init=w_init, bias_init=b_init)(x)


class SmallCNN(nn.Module):
    """The small MNIST network of Wong, Rice and Kolter 2020 (fast adversarial training).

    conv4x4-16 stride 2 -> conv4x4-32 stride 2 -> fc100 -> fc; ReLU. About 20x cheaper
    than `MadryCNN`, which makes adversarial training on a CPU practical.
    """

    num_classes: int
    channels: tuple[int, int] = (16, 32)
    hidden: int = 100

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        pad = ((1, 1), (1, 1))
        x = nn.relu(Conv(self.channels[0], (4, 4), strides=(2, 2), padding=pad)(x))
        x = nn.relu(Conv(self.channels[1], (4, 4), strides=(2, 2), padding=pad)(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)
