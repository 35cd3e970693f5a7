"""advjax.models.layers: the convolution and max-pool whose derivatives XLA:CPU keeps on its
fast kernels give flax's / lax's values and derivatives (every mode and order)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.models import layers

DN = ("NHWC", "HWIO", "NHWC")

# (kernel, stride, padding, input size): 1x1/3x3/4x4/5x5 kernels, odd and even, strides 1
# and 2, SAME / VALID / int / explicit pairs, sizes where VALID and strides drop rows.
CASES = [
    (1, 1, "SAME", 7),
    (1, 2, "VALID", 8),
    (3, 1, "SAME", 7),
    (3, 2, "SAME", 8),
    (3, 2, "VALID", 9),
    (3, 1, 1, 6),
    (4, 2, 1, 28),
    (4, 1, "SAME", 7),
    (4, 2, "VALID", 11),
    (5, 1, "SAME", 9),
    (5, 2, 2, 10),
    (5, 2, ((1, 2), (0, 3)), 9),
]


def reference_conv(x, w, stride, padding):
    pads = layers.resolve_padding(padding, x.shape[1:3], w.shape[:2], (stride, stride))
    return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=DN)


def fast_conv(x, w, stride, padding):
    return layers.conv2d(x, w, strides=stride, padding=padding)


@functools.partial(jax.jit, static_argnames=("k", "size", "seed", "cin", "cout"))
def inputs(k, size, seed=0, cin=3, cout=4):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (2, size, size, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    return x, w


def assert_close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(float(np.abs(b).max()), 1.0)
    assert float(np.abs(a - b).max()) <= 1e-5 * scale


@pytest.mark.parametrize("cin", [1, 8])
@pytest.mark.parametrize("k,stride,padding,size", CASES)
def test_conv2d_values_and_first_derivatives_match_lax(k, stride, padding, size, cin):
    x, w = inputs(k, size, cin=cin)

    def loss(conv):
        # A non-uniform weighting of the output so every cotangent entry differs.
        def f(x, w):
            out = conv(x, w, stride, padding)
            return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size)

        return f

    @jax.jit
    def run(x, w):  # one compiled program for the values and both gradients
        values = fast_conv(x, w, stride, padding), reference_conv(x, w, stride, padding)
        got = jax.grad(loss(fast_conv), argnums=(0, 1))(x, w)
        want = jax.grad(loss(reference_conv), argnums=(0, 1))(x, w)
        return values, got, want

    values, got, want = run(x, w)
    assert_close(*values)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("k,stride,padding,size", CASES[2::3])
def test_conv2d_gradient_of_input_gradient_matches_lax(k, stride, padding, size):
    # What the input-gradient and interpretation objectives differentiate: a norm of
    # the input gradient, with respect to the input and to the kernel.
    x, w = inputs(k, size, seed=1)

    def penalty(conv):
        def f(x, w):
            gx = jax.grad(lambda v: jnp.sum(jnp.tanh(conv(v, w, stride, padding))))(x)
            return jnp.sum(gx**2)

        return f

    both = jax.jit(
        lambda x, w: [
            jax.grad(penalty(c), argnums=(0, 1))(x, w) for c in (fast_conv, reference_conv)
        ]
    )
    got, want = both(x, w)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("k,stride,padding,size", CASES[1::4])
def test_conv2d_forward_mode_and_linear_transpose_match_lax(k, stride, padding, size):
    x, w = inputs(k, size, seed=2)
    dx, dw = inputs(k, size, seed=3)

    @jax.jit
    def run(x, w, dx, dw):  # one compiled program for both modes
        got = jax.jvp(lambda a, b: fast_conv(a, b, stride, padding), (x, w), (dx, dw))
        want = jax.jvp(lambda a, b: reference_conv(a, b, stride, padding), (x, w), (dx, dw))
        # The Fisher power iteration's pattern: linearise, then transpose the linear map.
        out, lin = jax.linearize(lambda a: jnp.tanh(fast_conv(a, w, stride, padding)), x)
        ct = jax.random.normal(jax.random.key(4), out.shape)
        back = jax.linear_transpose(lin, x)(ct)[0]
        _, ref_vjp = jax.vjp(lambda a: jnp.tanh(reference_conv(a, w, stride, padding)), x)
        return got, want, back, ref_vjp(ct)[0]

    got, want, back, ref_back = run(x, w, dx, dw)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    assert_close(back, ref_back)


@pytest.mark.parametrize("cin", [1, 16])
def test_conv2d_input_gradient_is_a_plain_convolution_or_a_sum_over_taps(cin):
    # The reason for the layer: lax's own rule convolves with a reversed kernel under
    # swapped (HWOI) labels, which XLA:CPU rewrites onto its fast path outside loops but
    # not inside them, and for a strided convolution it dilates the cotangent with zeros
    # (s*s times the work). Here both convolutions carry the forward's NHWC/HWIO labels
    # and the input gradient is an undilated stride-1 convolution (sub-pixel form).
    # With a 1-channel image the input gradient's kernel has 16 taps on space-to-depth
    # blocks: it is one matrix product and a sum of shifted slices, no convolution.
    x, w = inputs(4, 28, cin=cin)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v: jnp.sum(fast_conv(v, w, 2, 1) ** 2)))(x)
    convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert (len(convs), len(dots)) == ((1, 1) if cin == 1 else (2, 0))
    if cin > 1:
        grad = convs[1].params
        assert grad["lhs_dilation"] == (1, 1) and grad["window_strides"] == (1, 1)
    # Few input channels: the forward runs on 2x2 space-to-depth blocks at stride 1.
    assert convs[0].params["window_strides"] == ((1, 1) if cin < 4 else (2, 2))
    for eqn in convs:
        assert eqn.params["dimension_numbers"] == lax.conv_dimension_numbers(
            eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, DN
        )


def test_first_layer_value_is_one_matrix_product_under_differentiation():
    # A 5x5 kernel on a 1-channel image (25 taps) runs as sums over its taps on a CPU.
    # Alone, the value is a chain of multiply-adds (no matrix product). Under
    # differentiation it is one matrix product of the shifted pixels with the kernel,
    # because XLA:CPU copies an elementwise chain into each consumer of its result and
    # there the value also feeds derivatives; the input gradient is a second product.
    x, w = inputs(5, 12, cin=1)

    def dots(fn):
        eqns = jax.make_jaxpr(fn)(x).jaxpr.eqns
        return [e for e in eqns if e.primitive.name == "dot_general"]

    assert dots(lambda v: fast_conv(v, w, 1, "SAME")) == []
    products = dots(jax.grad(lambda v: jnp.sum(jnp.maximum(fast_conv(v, w, 1, "SAME"), 0) ** 2)))
    assert len(products) == 2
    assert products[0].invars[1].aval.shape == (25, 4)  # the forward's kernel rows


@pytest.mark.parametrize(
    "features,kernel,strides,padding,use_bias",
    [(8, (3, 3), 1, "SAME", True), (8, (4, 4), (2, 2), 1, False), (5, (5, 5), 2, "VALID", True)],
)
def test_conv_module_matches_flax_conv(features, kernel, strides, padding, use_bias):
    x = jax.random.uniform(jax.random.key(5), (3, 12, 12, 2))
    kw = dict(strides=strides, padding=padding, use_bias=use_bias)
    ours, theirs = layers.Conv(features, kernel, **kw), nn.Conv(features, kernel, **kw)
    v_ours, v_theirs = jax.jit(lambda key, x: (ours.init(key, x), theirs.init(key, x)))(
        jax.random.key(6), x
    )
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_close(*jax.jit(lambda v, x: (ours.apply(v, x), theirs.apply(v, x)))(v_theirs, x))


def flax_pool(x, window):
    return nn.max_pool(x, window, strides=window)


@functools.partial(jax.jit, static_argnums=(0, 1))
def pool_inputs(shape, ties):
    x = jax.random.uniform(jax.random.key(7), shape)
    if ties:  # a few levels: many windows hold several equal maxima
        x = jnp.round(2 * x)
    return x, jax.random.normal(jax.random.key(8), shape)


@functools.partial(jax.jit, static_argnums=2)
def pool_values_and_derivatives(x, dx, window):
    """Both pools' values and gradients, and <jvp(dx), w>, <dx, vjp(w)> for a weighting w."""
    out = flax_pool(x, window)
    weights = jnp.arange(1.0, out.size + 1).reshape(out.shape)
    grad = jax.grad(lambda v, pool: jnp.sum(pool(v, window) * weights), argnums=0)
    # Forward mode: the tangent is the tangent of the selected element.
    got = jax.jvp(lambda v: layers.max_pool(v, window), (x,), (dx,))[1]
    want = jax.vjp(lambda v: flax_pool(v, window), x)[1]
    return (
        (layers.max_pool(x, window), out),
        (grad(x, layers.max_pool), grad(x, flax_pool)),
        (jnp.sum(got * weights), jnp.sum(dx * want(weights)[0])),
    )


@pytest.mark.parametrize("window,shape", [((2, 2), (2, 8, 8, 3)), ((2, 2), (1, 7, 9, 2)),
                                          ((3, 2), (2, 9, 6, 1))])  # fmt: skip
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_flax_including_ties(window, shape, ties):
    x, dx = pool_inputs(shape, ties)
    values, grads, pairings = pool_values_and_derivatives(x, dx, window)
    np.testing.assert_array_equal(*values)
    np.testing.assert_array_equal(*grads)
    # <jvp(dx), w> == <dx, vjp(w)> with the reference's vjp.
    np.testing.assert_allclose(float(pairings[0]), float(pairings[1]), rtol=1e-5)
