"""Benchmark: where a Madry CNN training step spends its time, layer by layer, in advjax
and in a plain PyTorch loop.

`bench/train_step.py` times the whole step (forward, cross-entropy, backward, Adam) on
batch 128. This script times its parts on the same weights and the same inputs, each
part as its own program (advjax: one function compiled with `advjax.compile.jit`, like
the step; torch: eager, like the step):

* per layer (conv1 with its pool, bias and ReLU; conv2 likewise; fc1 with its ReLU; the
  fc2 logits): the forward pass alone, and the forward pass with the
  backward pass of what a training step needs (the parameter gradients, plus the input
  gradient for every layer but the first). The backward share is the difference;
* the Adam update of all 3,274,634 parameters (optax.adam against torch.optim.Adam);
* the whole step, for comparison with the sum of the parts (here ``--reps`` calls on
  the first batch per round; `train_step.py`, the benchmark of record for the whole
  step, times 20 steps on fresh batches per round).

Each layer gets the activation the network feeds it (the first batch's, transposed to
NCHW for torch) and an output cotangent of the same values on both sides. Parts run in
interleaved rounds after a short rest (`attacks.settle`); reported are medians and
ratios (advjax over torch: below 1 means advjax is faster), and apart from them the
compile time of each advjax program and each side's peak memory growth. A part timed
alone can take less time than inside the step (there XLA runs independent parts
concurrently on the same cores, and fuses differently), so the parts locate the
difference; the whole step is what `train_step.py` reports. Nothing is set in the
environment.

Run: ``.venv/bin/python bench/train_step_parts.py [--rounds N] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import (  # noqa: E402
    MNIST,
    build_flax,
    interleaved,
    machine_info,
    repeated_calls_args,
    timed_loop,
    torch_model,
    write_result,
)
from train_step import flax_step  # noqa: E402

from advjax import models  # noqa: E402
from advjax.compile import jit  # noqa: E402
from advjax.data import load_dataset  # noqa: E402
from advjax.models import layers  # noqa: E402


def nchw(a: np.ndarray) -> np.ndarray:
    """An NHWC activation in torch's NCHW layout (2-D arrays unchanged)."""
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)


def row(advjax_ms: float, torch_ms: float) -> dict:
    return {
        "advjax_ms": round(advjax_ms, 2),
        "torch_ms": round(torch_ms, 2),
        "ratio": round(advjax_ms / torch_ms, 3),
    }


def flax_parts(params):
    """``{layer: (forward(p, x), params of the layer, needs input gradient)}``, NHWC."""

    def conv(name):
        def f(p, x):
            y = layers.max_pool(layers.conv2d(x, p["kernel"], padding="SAME"), (2, 2))
            return jax.nn.relu(y + p["bias"])

        return f, params[name]

    def fc1(p, x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["kernel"] + p["bias"])

    return {
        "conv1": (*conv("Conv_0"), False),
        "conv2": (*conv("Conv_1"), True),
        "fc1": (fc1, params["Dense_0"], True),
        "fc2": (lambda p, x: x @ p["kernel"] + p["bias"], params["Dense_1"], True),
    }


def torch_parts(net):
    import torch.nn.functional as F

    c1, c2, d1, d2 = net[0], net[3], net[7], net[9]
    return {
        "conv1": (lambda x: F.max_pool2d(F.relu(c1(x)), 2), c1, False),
        "conv2": (lambda x: F.max_pool2d(F.relu(c2(x)), 2), c2, True),
        "fc1": (lambda x: F.relu(d1(x.flatten(1))), d1, True),
        "fc2": (d2, d2, True),
    }


def compiled(fn, args, compile_s: dict, key: str):
    """``fn`` (an `advjax.compile.jit` function) compiled for ``args``; the seconds it took
    go to ``compile_s[key]``."""
    t0 = time.perf_counter()
    out = fn.lower(*args).compile()
    compile_s[key] = round(time.perf_counter() - t0, 2)
    return out


def main(argv=None):
    args = repeated_calls_args(__doc__, argv, quick_reps=3)
    import torch
    import torch.nn.functional as F

    data = load_dataset(ml_collections.ConfigDict(
        {"name": "mnist", "num_train": 60000, "num_test": 16, "seed": 0}))  # fmt: skip
    x0 = np.asarray(data.train_x[: args.batch])
    y0 = np.asarray(data.train_y[: args.batch])
    module = build_flax("madry_cnn")
    variables = models.init_variables(module, MNIST, jax.random.key(0))
    params = variables["params"]
    net = torch_model("madry_cnn", variables, torch.device("cpu")).train()
    fparts, tparts = flax_parts(params), torch_parts(net)
    rng = np.random.default_rng(1)

    runs, checks, compile_s = {}, {}, {}
    x_j, x_t = jnp.asarray(x0), torch.from_numpy(nchw(x0))
    for name in fparts:
        f, p, needs_dx = fparts[name]
        tf, tmod, _ = tparts[name]
        fwd_j = compiled(jit(f), (p, x_j), compile_s, f"{name} forward")
        out_j = fwd_j(p, x_j)
        with torch.no_grad():
            out_t = tf(x_t)
        # The same cotangent on both sides (NHWC / NCHW).
        ct = rng.normal(size=out_j.shape).astype(np.float32)
        ct_j = jnp.asarray(ct)
        ct_t = torch.from_numpy(nchw(ct))
        checks[name] = float(np.abs(nchw(np.asarray(out_j)) - out_t.numpy()).max())

        def fwd_bwd(p, x, ct, f=f, needs_dx=needs_dx):
            _, vjp = jax.vjp(f, p, x)
            grads = vjp(ct)
            return grads if needs_dx else grads[0]

        fb_j = compiled(jit(fwd_bwd), (p, x_j, ct_j), compile_s, f"{name} forward+backward")
        xt_req = x_t.clone().requires_grad_(needs_dx)
        wanted = [*tmod.parameters()] + ([xt_req] if needs_dx else [])

        def t_fwd(tf=tf, x=x_t):
            with torch.no_grad():
                for _ in range(args.reps):
                    out = tf(x)
            return out

        def t_fb(tf=tf, x=xt_req, ct=ct_t, wanted=wanted):
            for _ in range(args.reps):
                out = torch.autograd.grad(tf(x), wanted, ct)
            return out

        runs[f"{name} forward/advjax"] = timed_loop(fwd_j, (p, x_j), args.reps)
        runs[f"{name} forward/torch"] = t_fwd
        runs[f"{name} forward+backward/advjax"] = timed_loop(fb_j, (p, x_j, ct_j), args.reps)
        runs[f"{name} forward+backward/torch"] = t_fb
        x_j, x_t = out_j, out_t

    # Adam on every parameter, with gradients of the parameters' size.
    opt = optax.adam(1e-3)
    grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)), params)
    adam_state = {"p": jax.tree.map(jnp.array, params), "s": opt.init(params)}

    def adam_update(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    adam_args = (adam_state["p"], adam_state["s"], grads)
    adam_j = compiled(jit(adam_update, donate_argnums=(0, 1)), adam_args, compile_s, "Adam update")
    adam_state["p"], adam_state["s"] = adam_j(*adam_args)
    t_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for q in net.parameters():
        q.grad = torch.randn_like(q)
    t_opt.step()

    def j_adam():
        for _ in range(args.reps):
            adam_state["p"], adam_state["s"] = adam_j(adam_state["p"], adam_state["s"], grads)
        return jax.block_until_ready(adam_state["p"])

    def t_adam():
        for _ in range(args.reps):
            t_opt.step()

    runs["Adam update/advjax"], runs["Adam update/torch"] = j_adam, t_adam

    # The whole step (as bench/train_step.py compiles it).
    whole = {"v": jax.tree.map(jnp.array, variables)}
    whole["s"] = opt.init(whole["v"])
    xb, yb = jnp.asarray(x0), jnp.asarray(y0)
    step_args = (whole["v"], whole["s"], xb, yb)
    step = compiled(flax_step(module, opt), step_args, compile_s, "whole step")
    whole["v"], whole["s"], _ = step(*step_args)
    t_net = torch_model("madry_cnn", variables, torch.device("cpu")).train()
    t_step_opt = torch.optim.Adam(t_net.parameters(), lr=1e-3)
    xt0 = torch.from_numpy(nchw(x0))
    yt0 = torch.from_numpy(y0.astype(np.int64))

    def j_step():
        for _ in range(args.reps):
            whole["v"], whole["s"], loss = step(whole["v"], whole["s"], xb, yb)
        return jax.block_until_ready(loss)

    def t_step():
        for _ in range(args.reps):
            t_step_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(t_net(xt0), yt0)
            loss.backward()
            t_step_opt.step()
        return loss

    runs["whole step/advjax"], runs["whole step/torch"] = j_step, t_step

    times, _, memory = interleaved(runs, args.rounds, "cpu")
    # Per call; the first round (memory measured, caches cold) is left out.
    ms = {k: 1e3 * statistics.median(v[1:] or v) / args.reps for k, v in times.items()}
    parts = {}
    for key in dict.fromkeys(k.split("/")[0] for k in ms):
        parts[key] = row(ms[f"{key}/advjax"], ms[f"{key}/torch"])
        parts[key]["advjax_compile_s"] = compile_s[key]
        # Peak RSS growth in the first round (`attacks.PeakRSS`).
        parts[key]["peak_rss_growth_mb"] = {
            side: round(memory[f"{key}/{side}"], 1) for side in ("advjax", "torch")
        }
    for name in fparts:
        fwd, fb = f"{name} forward", f"{name} forward+backward"
        parts[f"{name} backward (difference)"] = row(
            ms[f"{fb}/advjax"] - ms[f"{fwd}/advjax"], ms[f"{fb}/torch"] - ms[f"{fwd}/torch"]
        )
    step_parts = ("Adam update", *(f"{n} forward+backward" for n in fparts))
    summed = row(*(sum(ms[f"{k}/{side}"] for k in step_parts) for side in ("advjax", "torch")))
    result = {
        "machine": machine_info(load_average_end=list(os.getloadavg())),
        "setup": {
            "model": "madry_cnn",
            "batch": args.batch,
            "calls_per_round": args.reps,
            "rounds": args.rounds,
            "median_over": "rounds after the first",
            "ratio": "advjax ms / torch ms (below 1: advjax faster)",
        },
        "forward_max_abs_difference": checks,
        "parts": parts,
        "sum_of_parts": summed,
    }
    width = max(len(k) for k in parts)
    for k, v in [*parts.items(), ("sum of the parts", summed)]:
        a, t, r = v["advjax_ms"], v["torch_ms"], v["ratio"]
        print(f"{k:{width}s}  advjax {a:7.2f} ms  torch {t:7.2f} ms  ratio {r:.2f}")
    write_result(result, "train_step_parts", args)


if __name__ == "__main__":
    main()
