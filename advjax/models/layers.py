"""Layers whose derivatives stay on XLA:CPU's fast kernels inside attack loops.

`Conv` is a drop-in for ``flax.linen.Conv`` on NHWC images (same ``kernel``/``bias``
variables, shapes and initialisers, so checkpoints are interchangeable) and `max_pool`
for ``flax.linen.max_pool`` with non-overlapping windows. Both give the same values and
derivatives as flax's (all orders, forward and reverse mode); they differ only in how
the derivatives are written down for XLA:

* A convolution's input gradient is a convolution of the output cotangent with the
  spatially flipped kernel, in and out channels swapped. JAX's own transpose rule
  expresses the flip as a window reversal with ``01oi`` kernel labels; outside a loop
  XLA:CPU rewrites that into a materialised HWIO kernel and runs its fast (Eigen)
  convolution, but inside ``lax.fori_loop`` it does not, and an attack's step loop
  runs 3-7x slower (jax-ml/jax#12868; ``bench/attacks.py``). `conv2d` flips and
  transposes the kernel itself, so the input gradient is a plain NHWC/HWIO
  convolution wherever it is compiled.
* ``flax.linen.max_pool``'s gradient lowers to XLA's select-and-scatter, which
  XLA:CPU runs about 10x slower than the convolution that precedes it. `max_pool`
  takes the maximum of the window's strided slices and routes the tangent to the
  first maximal element (the element select-and-scatter picks), with elementwise ops.

Both are ``jax.custom_jvp`` rules whose tangents are linear maps JAX can transpose, so
``jax.grad``, ``jax.jvp``, ``jax.linearize`` and gradients of gradients (the
input-gradient, Jacobian and interpretation objectives) all work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Padding = str | int | Sequence[int | tuple[int, int]]


def resolve_padding(
    padding: Padding,
    in_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Explicit ``(low, high)`` pairs per spatial dimension, as ``flax.linen.Conv`` reads
    ``padding``: 'SAME', 'VALID', an int (both sides of every dimension), or a sequence
    of ints or pairs (one per spatial dimension)."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding {padding!r}: allowed 'SAME', 'VALID', an int or pairs")
        return tuple(lax.padtype_to_pads(in_shape, kernel_shape, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding),) * len(kernel_shape)
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    if len(pads) != len(kernel_shape) or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding {padding!r}: need one int or (low, high) pair per dimension")
    return pads


def _conv(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMENSION_NUMBERS)


def conv_input_gradient(
    cotangent: jax.Array,
    kernel: jax.Array,
    in_spatial: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> jax.Array:
    """The input gradient of ``_conv`` as one NHWC/HWIO convolution.

    The cotangent, dilated by the strides, is convolved with the spatially flipped
    kernel whose in and out channels are swapped; padding ``k - 1 - low`` before and
    whatever recovers the input size after (negative when a VALID or strided
    convolution never read the last rows).
    """
    flipped = jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2))
    grad_pads = []
    for k, n, m, s, (low, _) in zip(
        kernel.shape[:2], in_spatial, cotangent.shape[1:3], strides, pads, strict=True
    ):
        before = k - 1 - low
        grad_pads.append((before, n + k - 1 - ((m - 1) * s + 1) - before))
    return lax.conv_general_dilated(
        cotangent,
        flipped,
        (1, 1),
        grad_pads,
        lhs_dilation=tuple(strides),
        dimension_numbers=_DIMENSION_NUMBERS,
    )


def _is_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv2d(x, kernel, strides, pads):
    return _conv(x, kernel, strides, pads)


@functools.partial(_conv2d.defjvp, symbolic_zeros=True)
def _conv2d_jvp(strides, pads, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    out = _conv(x, kernel, strides, pads)
    tangent = jnp.zeros(out.shape, out.dtype)
    if not _is_zero(dx):
        # The tangent is written as the transpose of `conv_input_gradient`, so that
        # reverse mode (which transposes the tangent map) yields exactly that
        # function: the flipped, channel-swapped kernel as an explicit array.
        cotangent_shape = jax.ShapeDtypeStruct(out.shape, out.dtype)
        input_gradient = jax.linear_transpose(
            lambda c: conv_input_gradient(c, kernel, x.shape[1:3], strides, pads),
            cotangent_shape,
        )
        tangent = tangent + input_gradient(dx)[0]
    if not _is_zero(dkernel):
        tangent = tangent + _conv(x, dkernel, strides, pads)
    return out, tangent


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
) -> jax.Array:
    """2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (``lax.conv_general_dilated``
    values and derivatives, derivatives lowered to XLA:CPU's fast kernels)."""
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    pads = resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
    return _conv2d(x, kernel, strides, tuple(tuple(int(v) for v in p) for p in pads))


class Conv(nn.Module):
    """``flax.linen.Conv`` for NHWC images with `conv2d` underneath.

    Same fields (the subset advjax uses), same variables (``kernel`` of shape
    ``(*kernel_size, in_features, features)``, ``bias`` of shape ``(features,)``), same
    default initialisers (LeCun normal, zeros).
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if isinstance(self.kernel_size, int) or len(self.kernel_size) != 2 or x.ndim != 4:
            raise ValueError(
                f"Conv takes 2-D kernels on NHWC batches, got kernel_size {self.kernel_size!r} "
                f"and input shape {x.shape}"
            )
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features)
        )
        y = conv2d(x, kernel.astype(x.dtype), strides=self.strides, padding=self.padding)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(x.dtype)
        return y


def _window_slices(x: jax.Array, window: Sequence[int]) -> list[jax.Array]:
    kh, kw = window
    h, w = x.shape[1] // kh * kh, x.shape[2] // kw * kw
    x = x[:, :h, :w]
    return [x[:, i::kh, j::kw] for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x, window):
    return functools.reduce(jnp.maximum, _window_slices(x, window))


@_max_pool.defjvp
def _max_pool_jvp(window, primals, tangents):
    (x,), (dx,) = primals, tangents
    out = functools.reduce(jnp.maximum, _window_slices(x, window))
    taken = jnp.zeros(out.shape, bool)
    tangent = jnp.zeros(out.shape, dx.dtype)
    # Row-major window order, first maximum wins: the element XLA's select-and-scatter
    # (flax.linen.max_pool's gradient) picks when several are equal.
    for part, dpart in zip(_window_slices(x, window), _window_slices(dx, window), strict=True):
        pick = (part == out) & ~taken
        tangent = jnp.where(pick, dpart, tangent)
        taken = taken | pick
    return out, tangent


def max_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """``flax.linen.max_pool(x, window, strides=window)`` (VALID padding) on NHWC."""
    return _max_pool(x, tuple(int(v) for v in window))
