"""Benchmark: a first layer's value under differentiation as one matrix product against
the elementwise chain of multiply-adds, in whole training steps.

On a CPU, `advjax.models.layers` runs a stride-1 convolution of at most
`layers._TAPS_AT_MOST` taps as a sum over its taps (`layers._conv_taps`). Alone, the
value is a chain of multiply-adds, one elementwise fusion. Under differentiation
(`layers._conv2d_jvp`) the value also feeds derivative masks and the next layer's
weight gradient, and XLA:CPU copies an elementwise chain into each consumer of its
result; there the value is one matrix product of the shifted pixels with the kernel,
which XLA computes once.

This script compiles the same training step (forward, cross-entropy, backward, Adam
1e-3; `advjax.compile.jit`) twice, once with the product (advjax's form) and once with
the chain in its place, and times both in interleaved rounds of ``--steps`` steps on
fresh batches (`attacks.interleaved`), for the Madry CNN (MNIST, batch 128: the first
layer is 5x5 on 1 channel, followed by a max-pool) and PreAct ResNet-18 (CIFAR-shaped
random images, batch 32: 3x3 on 3 channels, followed by BatchNorm). Reported: median
milliseconds per step, the ratio product / chain (below 1: the product is faster), and
the largest difference between the two forms' final losses. Nothing is set in the
environment.

Run: ``.venv/bin/python bench/taps_shared.py [--rounds N] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attacks as harness  # noqa: E402  (bench/attacks.py: timing and result helpers)

from advjax import losses, models  # noqa: E402
from advjax.compile import jit  # noqa: E402
from advjax.data import DatasetInfo  # noqa: E402
from advjax.models import layers  # noqa: E402

# Name -> (dataset shape, batch).
MODELS = {
    "madry_cnn": (harness.MNIST, 128),
    "preact_resnet18": (DatasetInfo("cifar10", (32, 32, 3), 10), 32),
}


def make_step(module, opt, has_batch_stats: bool):
    @jit
    def step(variables, state, xb, yb):
        def loss(params):
            v = {**variables, "params": params}
            if has_batch_stats:
                out, updates = module.apply(v, xb, train=True, mutable=["batch_stats"])
            else:
                out, updates = module.apply(v, xb), {}
            return losses.cross_entropy(out, yb).mean(), updates

        (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        step_updates, state = opt.update(grads, state, variables["params"])
        params = optax.apply_updates(variables["params"], step_updates)
        return {**variables, **updates, "params": params}, state, value

    return step


# advjax's `_conv_taps` (the product under differentiation).
PRODUCT = layers._conv_taps


def chain_only(x, kernel, pads, *, shared=False):
    """`layers._conv_taps` with the chain in every context (advjax's form before)."""
    del shared
    return PRODUCT(x, kernel, pads, shared=False)


def compile_step(module, opt, variables, batches, labels, form):
    layers._conv_taps = PRODUCT if form == "product" else chain_only
    try:
        step = make_step(module, opt, "batch_stats" in variables)
        state = opt.init(variables["params"])
        jax.block_until_ready(step(variables, state, batches[0], labels))
    finally:
        layers._conv_taps = PRODUCT
    return step


def bench_model(name, args):
    info, batch = MODELS[name]
    module = models.build_model(ml_collections.ConfigDict({"name": name}), info)
    variables = models.init_variables(module, info, jax.random.key(0))
    opt = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    batches = jnp.asarray(rng.uniform(size=(args.steps, batch, *info.input_shape)), jnp.float32)
    labels = jnp.arange(batch) % info.num_classes
    steps = {
        f: compile_step(module, opt, variables, batches, labels, f) for f in ("product", "chain")
    }

    def run(step):
        def go():
            v, s = variables, opt.init(variables["params"])
            for i in range(args.steps):
                v, s, value = step(v, s, batches[i], labels)
            return jax.block_until_ready(value)

        return go

    times, outs, _ = harness.interleaved({f: run(s) for f, s in steps.items()}, args.rounds, "cpu")
    ms = {f: round(harness.median(t[1:]) * 1e3 / args.steps, 2) for f, t in times.items()}
    entry = {
        "batch": batch,
        "median_ms_per_step": ms,
        "all_rounds_ms_per_step": {
            f: [round(x * 1e3 / args.steps, 2) for x in t] for f, t in times.items()
        },
        "ratio_product_over_chain": round(ms["product"] / ms["chain"], 3),
        "final_loss_difference": float(abs(outs["product"] - outs["chain"])),
    }
    print(f"{name}: {entry}", flush=True)
    return entry


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="training steps per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 3, 2
    result = {
        "machine": harness.machine_info(),
        "setup": {
            "step": "forward, cross-entropy, backward, Adam(1e-3) update",
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "median_over": "rounds after the first",
            "ratio": "product ms / chain ms (below 1: the product is faster)",
        },
        "models": {name: bench_model(name, args) for name in args.models.split(",")},
    }
    result["machine"]["load_average_end"] = list(os.getloadavg())
    harness.write_result(result, "taps_shared", args)


if __name__ == "__main__":
    main()
