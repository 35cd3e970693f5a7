"""advjax.compile: the compile options advjax sets on its own programs are applied where
the installed jaxlib supports them, refused options fall back to none, the off switch
works, and the programs compute what plain ``jax.jit`` computes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import compile as advjax_compile
from advjax import losses, models
from advjax.data import DatasetInfo


@pytest.fixture
def fresh_options(monkeypatch):
    advjax_compile.reset()
    yield monkeypatch
    monkeypatch.undo()
    advjax_compile.reset()


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_options_reach_the_compiled_program(fresh_options):
    status = advjax_compile.options_status()
    # The Madry CNN's second convolution on a batch of 8 (XLA keeps much smaller ones on
    # its own kernels whatever the options).
    x, k = jnp.ones((8, 14, 14, 32)), jnp.ones((5, 5, 32, 64))
    ours = advjax_compile.jit(_conv).lower(x, k).compile().as_text()
    plain = jax.jit(_conv).lower(x, k).compile().as_text()
    if status["reason"] == "supported":
        assert status["backend"] == "cpu"
        assert status["options"] == advjax_compile.CPU_OPTIONS
        # XLA compiled the convolution another way (YNNPACK's, not its default).
        assert ours != plain
    else:
        # Refused (another jaxlib) or another backend: no options, the same program.
        assert status["options"] == {}
        assert "refused" in status["reason"] or status["backend"] != "cpu"
        assert ours == plain


def test_an_option_the_jaxlib_refuses_falls_back_to_none(fresh_options):
    fresh_options.setattr(advjax_compile, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})
    status = advjax_compile.options_status()
    assert status["options"] == {}
    assert "refused" in status["reason"] and "xla_cpu_no_such_option" in status["reason"]
    f = advjax_compile.jit(lambda a: a @ a.T)
    a = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(f(a), np.asarray(a) @ np.asarray(a).T)


def test_off_switch(fresh_options):
    fresh_options.setenv(advjax_compile.ENV, "0")
    status = advjax_compile.options_status()
    assert status["options"] == {} and status["reason"] == f"{advjax_compile.ENV}=0"


def test_compiled_with_options_matches_plain_jit_on_a_cnn_gradient(fresh_options):
    # Loss, parameter gradient and input gradient of the Madry CNN: what training and the
    # attacks compute, with and without the options.
    info = DatasetInfo("mnist", (28, 28, 1), 10)
    module = models.build_model(ml_collections.ConfigDict({"name": "madry_cnn"}), info)
    variables = models.init_variables(module, info, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
    y = jnp.arange(16) % 10

    def grads(v, xb):
        loss = lambda v, xb: losses.cross_entropy(module.apply(v, xb), y).mean()  # noqa: E731
        return loss(v, xb), jax.grad(loss, argnums=(0, 1))(v, xb)

    got = advjax_compile.jit(grads)(variables, x)
    want = jax.jit(grads)(variables, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = max(float(jnp.abs(w).max()), 1e-6)
        assert float(jnp.abs(g - w).max()) <= 1e-4 * scale


def test_jit_keeps_jax_jit_keywords_and_methods(fresh_options):
    calls = []

    @advjax_compile.jit
    def plain(a):
        calls.append(1)
        return a * 2

    @(lambda f: advjax_compile.jit(f, static_argnames=("power",)))
    def with_static(a, *, power):
        return a**power

    decorator = advjax_compile.jit(static_argnames=("power",))
    also_static = decorator(lambda a, *, power: a + power)

    a = jnp.arange(3.0)
    np.testing.assert_allclose(plain(a), [0, 2, 4])
    plain(a + 1)
    assert len(calls) == 1  # traced once, cached like jax.jit
    np.testing.assert_allclose(with_static(a, power=3), [0, 1, 8])
    np.testing.assert_allclose(also_static(a, power=2), [2, 3, 4])
    assert plain.__name__ == "plain"
    assert "mul" in str(plain.trace(a).jaxpr)
    with pytest.raises(TypeError, match="compiler_options"):
        advjax_compile.jit(lambda a: a, compiler_options={})


def test_importing_and_decorating_starts_no_backend(tmp_path):
    # jax.distributed.initialize and device-count flags must run before any backend
    # starts: importing advjax and defining jitted functions must not start one.
    script = textwrap.dedent(
        """
        from jax._src import xla_bridge
        import advjax.evaluation, advjax.training, advjax.attacks
        from advjax.compile import jit
        f = jit(lambda a: a + 1)
        assert not xla_bridge.backends_are_initialized(), "backend started"
        print("ok")
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_nested_in_another_program_inlines_without_options(fresh_options):
    # JAX refuses compile options on a jit traced into another program; advjax's
    # functions are called inside callers' jit, lax.map and vmap.
    inner = advjax_compile.jit(lambda a: jnp.sin(a) * 2)
    a = jnp.arange(6.0).reshape(3, 2)
    want = np.sin(np.asarray(a)) * 2
    np.testing.assert_allclose(jax.jit(inner)(a), want, rtol=1e-6)
    np.testing.assert_allclose(advjax_compile.jit(lambda b: inner(b))(a), want, rtol=1e-6)
    np.testing.assert_allclose(jax.lax.map(inner, a), want, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(inner)(a), want, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda b: inner(b).sum())(a), 2 * np.cos(a), rtol=1e-6)
