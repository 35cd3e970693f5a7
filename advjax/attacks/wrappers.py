"""Model wrappers for attacking non-differentiable or randomised defences.

BPDA (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false sense of
security", Sec. 4.1): use the true, non-differentiable layer on the forward pass and a
differentiable approximation (often the identity) on the backward pass.

EOT (same paper, Sec. 4.3): attack the expectation over the model's randomness,
``E_t[f(t(x))]``, estimated with ``num_samples`` draws.

Both return ordinary ``logits_fn(x) -> logits`` closures, so every attack in
`advjax.attacks` applies to them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Fn = Callable[[jax.Array], jax.Array]


def bpda(forward: Fn, backward: Fn | None = None) -> Fn:
    """Backward-pass differentiable approximation of a layer.

    Args:
      forward: the true layer ``g`` (e.g. quantisation, JPEG, a denoiser); may have
        zero or undefined gradients.
      backward: a differentiable ``h`` with ``h(x) ~ g(x)``; its vector-Jacobian
        product replaces ``g``'s (default: identity, so ``dg/dx ~ I``).

    Returns:
      ``g_bpda`` with ``g_bpda(x) = forward(x)`` and ``vjp(g_bpda) = vjp(backward)``.
      ``forward``/``backward`` must not close over values being differentiated (for
      a preprocessing layer they have no parameters).
    """
    back = backward if backward is not None else (lambda x: x)

    @jax.custom_vjp
    def layer(x):
        return forward(x)

    def layer_fwd(x):
        return forward(x), x

    def layer_bwd(x, cot):
        _, vjp = jax.vjp(back, x)
        return vjp(cot)

    layer.defvjp(layer_fwd, layer_bwd)
    return layer


def eot(
    random_logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    num_samples: int,
    key: jax.Array,
    chunk_size: int | None = None,
    average: str = "probs",
) -> Fn:
    """Expectation over transformation of a randomised model.

    Args:
      random_logits_fn: ``(x, key) -> logits`` of a randomised model.
      num_samples: number of random draws averaged.
      key: PRNG key for the draws. The same draws are reused at every call (common
        random numbers), so the wrapped model is deterministic: attack steps, restarts
        and APGD's checkpoints compare values of one objective. Build a new wrapper
        with another key for an independent estimate.
      chunk_size: draws evaluated at once (streamed with ``lax.map``); default all.
      average: 'probs' returns ``log E[softmax(f)]`` (the expected prediction, as
        logits), 'logits' returns ``E[f]``.

    Returns:
      ``logits_fn(x) -> logits``.
    """
    if num_samples < 1:
        raise ValueError(f"eot: num_samples must be >= 1, got {num_samples}")
    if average not in ("probs", "logits"):
        raise ValueError(f"eot: average must be 'probs' or 'logits', got {average!r}")
    keys = jax.random.split(key, num_samples)
    chunk = num_samples if chunk_size is None else max(1, min(chunk_size, num_samples))

    def logits_fn(x: jax.Array) -> jax.Array:
        outs = jax.lax.map(lambda k: random_logits_fn(x, k), keys, batch_size=chunk)
        if average == "logits":
            return jnp.mean(outs, axis=0)
        logp = jax.nn.log_softmax(outs, axis=-1)
        return jax.nn.logsumexp(logp, axis=0) - jnp.log(float(num_samples))

    return logits_fn
