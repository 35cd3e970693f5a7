"""advjax: adversarial robustness research in JAX and Flax.

Attacks, adversarial-training objectives and analyses are pure functions of arrays
and PRNG keys; models reach them as ``logits_fn(x) -> logits`` closures. Everything
a run does is driven by an ``ml_collections.ConfigDict`` through ``launch/main.py``.
"""

__version__ = "0.1.0"
