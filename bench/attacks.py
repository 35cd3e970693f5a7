"""Benchmark: advjax attacks against torchattacks and a plain PyTorch loop, same weights.

For each model (``small_cnn``, the default of ``configs/mnist_fast.py``, and the Madry
et al. CNN ``madry_cnn``) the flax network is adversarially trained for a few hundred
steps (PGD-AT with an eps ramp, so that robust accuracy at eps 0.3 is far from 0 and the
ensemble's later stages have work to do; cached under ``~/.cache/advjax-bench``), copied
weight for weight into PyTorch (the logits are asserted to agree), and attacked on the
first MNIST test images, l_inf eps 0.3:

* PGD-40, step 0.01, random start: ``advjax.attacks.pgd.pgd`` with its default loop,
  compiled by ``advjax.compile.jit`` like every advjax program (with advjax's compile
  options); torchattacks' ``PGD``; and a plain PyTorch loop;
* the AutoAttack-style ensemble stage by stage, each stage on the points still robust
  after the previous ones (each side on its own robust set): APGD-CE (100 steps), APGD-T
  (9 targets x 100 steps), Square (5000 queries); torchattacks' ``APGD``, ``APGDT`` and
  ``Square`` with the same settings.

Implementations run in interleaved rounds, each after a short rest on a CPU (`settle`);
reported are per-stage medians, ratios
(advjax time / torchattacks time: below 1 means advjax is faster), compile time
(separately, never inside the medians), peak memory, robust accuracies of both sides
and the machine's load average. Nothing is set in the environment: the numbers are
what a user gets. ``--device cuda`` runs both frameworks on the GPU (bench/run_gpu.sh).

Run: ``.venv/bin/python bench/attacks.py [--quick]`` (torch and torchattacks are bench
only: ``pip install -e ".[bench]"`` and ``pip install --no-deps torchattacks``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from advjax import losses, models  # noqa: E402
from advjax.attacks.apgd import apgd, apgd_targeted  # noqa: E402
from advjax.attacks.pgd import pgd  # noqa: E402
from advjax.attacks.square import square  # noqa: E402
from advjax.compile import jit, options_status  # noqa: E402
from advjax.data import DatasetInfo, load_dataset  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "advjax-bench")
MNIST = DatasetInfo("mnist", (28, 28, 1), 10)
EPS = 0.3


# ----------------------------------------------------------------------------- models


def build_flax(name: str):
    return models.build_model(ml_collections.ConfigDict({"name": name}), MNIST)


def use_flax_layers() -> None:
    """Builds the CNNs with JAX's own convolution derivatives and flax's max-pool
    (select-and-scatter gradient), the layers before `advjax.models.layers`: its `Conv`
    (same variables and values) then calls these in place of its own."""
    import flax.linen as nn
    from jax import lax

    from advjax.models import layers

    def conv2d(x, kernel, *, strides=1, padding="SAME"):
        strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
        pads = layers.resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
        return lax.conv_general_dilated(
            x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    layers.conv2d = conv2d
    layers.max_pool = lambda x, window: nn.max_pool(x, tuple(window), strides=tuple(window))


def adversarially_trained(name: str, data, *, steps: int, batch: int = 128, seed: int = 0):
    """Flax variables after ``steps`` of PGD-AT (3 steps, eps ramped to 0.3 over the first
    half), cached on disk by model, steps and seed. Returns (module, variables, seconds)."""
    module = build_flax(name)
    variables = models.init_variables(module, MNIST, jax.random.key(seed))
    path = os.path.join(CACHE, f"{name}-pgdat{steps}-seed{seed}.npz")
    leaves, treedef = jax.tree.flatten(variables)
    if os.path.exists(path):
        stored = np.load(path)
        return module, jax.tree.unflatten(treedef, [stored[f"a{i}"] for i in range(len(leaves))]), 0
    opt = optax.adam(1e-3)

    @jit
    def step(v, state, xb, yb, key, eps):
        def loss(p, xa):
            return losses.cross_entropy(module.apply(p, xa), yb).mean()

        x_adv = pgd(lambda a: module.apply(v, a), xb, yb, key, eps=eps, step_size=eps / 2,
                    num_steps=3)  # fmt: skip
        grads = jax.grad(loss)(v, jax.lax.stop_gradient(x_adv))
        updates, state = opt.update(grads, state, v)
        return optax.apply_updates(v, updates), state

    t0 = time.perf_counter()
    state = opt.init(variables)
    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.integers(0, data.train_x.shape[0], batch)
        eps = jnp.float32(EPS * min(1.0, (i + 1) / max(steps // 2, 1)))
        variables, state = step(variables, state, data.train_x[idx], data.train_y[idx],
                                jax.random.key(i), eps)  # fmt: skip
    os.makedirs(CACHE, exist_ok=True)
    np.savez(path, **{f"a{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(variables))})
    return module, variables, time.perf_counter() - t0


def torch_model(name: str, variables, device):
    """The same network in PyTorch (NCHW) with the flax weights copied in (eval mode)."""
    import torch
    from torch_loop import torch_net

    p = jax.tree.map(np.asarray, variables)["params"]
    if name == "madry_cnn":
        net = torch_net(name)
        convs, dense, hw, ch = (0, 3), (7, 9), 7, 64
    elif name == "small_cnn":
        c0, c1 = p["Conv_0"]["kernel"].shape[-1], p["Conv_1"]["kernel"].shape[-1]
        net = torch_net(name, c0=c0, c1=c1, hidden=p["Dense_0"]["kernel"].shape[-1])
        convs, dense, hw, ch = (0, 2), (5, 7), 7, c1
    else:
        raise ValueError(f"no PyTorch twin for model {name!r}")
    with torch.no_grad():
        for idx, key in zip(convs, ("Conv_0", "Conv_1"), strict=True):
            net[idx].weight.copy_(torch.from_numpy(p[key]["kernel"].transpose(3, 2, 0, 1).copy()))
            net[idx].bias.copy_(torch.from_numpy(p[key]["bias"]))
        # flax flattens (h, w, c), torch (c, h, w).
        k = p["Dense_0"]["kernel"]
        k = k.reshape(hw, hw, ch, -1).transpose(2, 0, 1, 3).reshape(hw * hw * ch, -1)
        net[dense[0]].weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
        net[dense[0]].bias.copy_(torch.from_numpy(p["Dense_0"]["bias"]))
        net[dense[1]].weight.copy_(torch.from_numpy(np.ascontiguousarray(p["Dense_1"]["kernel"].T)))
        net[dense[1]].bias.copy_(torch.from_numpy(p["Dense_1"]["bias"]))
    return net.to(device).eval()


# ----------------------------------------------------------------------------- timing


class PeakRSS:
    """Peak resident memory growth (MB) of this process while the block runs, sampled
    every 5 ms: one measure for both frameworks on a CPU."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mb = round((self.peak - self.base) / 2**20, 1)


@contextlib.contextmanager
def full_precision():
    """Both frameworks at float32 precision for the weight-agreement checks. On a GPU both
    default to TF32 convolutions (jax also for matmuls), which move logits by about 1e-3:
    the checks compare weights, the timed runs keep each framework's defaults."""
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gpu_peak_mb(device: str) -> dict | None:
    """On a GPU: torch's peak allocation since the last reset and jax's process-wide peak
    (XLA preallocates, so jax's figure is what its allocator handed out, not reserved)."""
    if not device.startswith("cuda"):
        return None
    import torch

    stats = jax.devices("gpu")[0].memory_stats() or {}
    return {
        "torch": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "jax_process_peak": round(stats.get("peak_bytes_in_use", 0) / 2**20, 1),
    }


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def block(out):
    return jax.block_until_ready(out)


# Seconds of rest before each timed side on a CPU. After a parallel region torch's OpenMP
# workers spin-wait for a while (XLA's pool briefly too) and take cores from whatever runs
# next: on the Madry CNN's training step the side timed right after torch measured about
# 5% slower than the same side timed after another XLA program.
SETTLE_S = 0.5


def machine_info(**extra) -> dict:
    """The machine and library versions a result was measured with (every benchmark's
    ``machine`` entry), plus ``extra`` entries."""
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "advjax_compile_options": options_status(),
        **extra,
    }


def repeated_calls_args(doc: str, argv, *, quick_reps: int) -> argparse.Namespace:
    """Flags of a benchmark that times ``--reps`` calls per round in ``--rounds``
    interleaved rounds on batch ``--batch`` (``--quick``: ``quick_reps`` calls, 2 rounds),
    writing to ``--out``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.rounds = quick_reps, 2
    return args


def timed_loop(fn, args, reps: int):
    """``reps`` calls of the compiled ``fn(*args)``, waited for."""

    def run():
        for _ in range(reps):
            out = fn(*args)
        return jax.block_until_ready(out)

    return run


def torch_loop(fn, reps: int):
    """``reps`` calls of ``fn()`` under ``torch.no_grad()`` (the torch side of
    `timed_loop`); returns the last output."""
    import torch

    def run():
        with torch.no_grad():
            for _ in range(reps):
                out = fn()
        return out

    return run


def write_result(result: dict, name: str, args) -> str:
    """Writes ``result`` to ``args.out`` or ``bench/results/<name>[-quick].json``."""
    out = args.out or os.path.join(RESULTS, name + ("-quick" if args.quick else "") + ".json")
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print("wrote", out)
    return out


def settle(device: str) -> None:
    """Waits for the device, then (on a CPU) lets the other side's threads go idle."""
    synchronize(device)
    if not device.startswith("cuda"):
        time.sleep(SETTLE_S)


def interleaved(runs: dict, rounds: int, device: str):
    """Runs every callable once per round, in turn (each after `settle`); returns times,
    last outputs and the peak memory of each (measured in the first round)."""
    times = {k: [] for k in runs}
    outs, memory = {}, {}
    for r in range(rounds):
        for k, fn in runs.items():
            settle(device)
            if r == 0:
                with PeakRSS() as peak:
                    t0 = time.perf_counter()
                    outs[k] = fn()
                    synchronize(device)
                    times[k].append(time.perf_counter() - t0)
                memory[k] = peak.mb
                if device.startswith("cuda"):
                    import torch

                    memory[k] = {"host_rss_growth": peak.mb, "gpu": gpu_peak_mb(device)}
                    torch.cuda.reset_peak_memory_stats()
            else:
                t0 = time.perf_counter()
                outs[k] = fn()
                synchronize(device)
                times[k].append(time.perf_counter() - t0)
    return times, outs, memory


def median(ts):
    return round(statistics.median(ts), 3)


# ----------------------------------------------------------------------------- attacks


def plain_torch_pgd(net, x, y, *, eps, alpha, steps, generator):
    """The textbook loop (Madry et al. 2018): random start, signed steps, clip."""
    import torch
    import torch.nn.functional as F

    delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(net(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


class AdvjaxStage:
    """One advjax attack, jitted with the model's variables as an argument; compiled
    ahead of time per input shape (the compile seconds are kept apart)."""

    def __init__(self, module, variables, attack, device):
        self.variables = jax.device_put(variables, device)
        self.device = device
        self.fn = jit(lambda v, x, y, k: attack(lambda a: module.apply(v, a), x, y, k))
        self.compiled, self.compile_s, self.temp_mb = {}, 0.0, 0.0

    def compile(self, x, y, key):
        if x.shape not in self.compiled:
            t0 = time.perf_counter()
            c = self.fn.lower(self.variables, x, y, key).compile()
            self.compile_s += time.perf_counter() - t0
            mem = c.memory_analysis()
            if mem is not None:
                self.temp_mb = max(self.temp_mb, mem.temp_size_in_bytes / 2**20)
            self.compiled[x.shape] = c
        return self.compiled[x.shape]

    def __call__(self, x, y, key):
        if x.shape[0] == 0:
            return x
        return block(self.compile(x, y, key)(self.variables, x, y, key))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both frameworks)")
    ap.add_argument("--models", default="small_cnn,madry_cnn")
    ap.add_argument("--num-test", type=int, default=512, help="images for PGD-40")
    ap.add_argument("--ensemble-num-test", default="small_cnn=512,madry_cnn=64",
                    help="images for the ensemble, per model")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ensemble-rounds", type=int, default=2)
    ap.add_argument("--train-steps", default="small_cnn=400,madry_cnn=150")
    ap.add_argument("--apgd-steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--skip-ensemble", action="store_true")
    ap.add_argument(
        "--layers",
        choices=("advjax", "flax"),
        default="advjax",
        help="'flax': build the models with flax's nn.Conv and nn.max_pool, as advjax did "
        "before advjax.models.layers (same variables), to measure the difference",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: torch's default). On a loaded CPU torch's default "
        "OpenMP threads spin against the other jobs and run up to 10x slower than one "
        "thread; one thread is then the stronger baseline",
    )
    ap.add_argument("--quick", action="store_true", help="a development run of a minute or two")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.num_test, args.rounds, args.ensemble_rounds = 128, 2, 2
        args.ensemble_num_test = "small_cnn=64,madry_cnn=16"
        args.apgd_steps, args.square_queries = 20, 200
    if args.layers == "flax":
        use_flax_layers()
    per_model = lambda s: dict(kv.split("=") for kv in s.split(","))  # noqa: E731
    ens_n, train_steps = per_model(args.ensemble_num_test), per_model(args.train_steps)
    gpu = args.device.startswith("cuda")
    out_path = args.out or os.path.join(
        RESULTS,
        ("gpu-" if gpu else "")
        + "attacks"
        + ("-flax-layers" if args.layers == "flax" else "")
        + ("-quick" if args.quick else "")
        + ".json",
    )

    import torch
    import torchattacks

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    jdev = jax.devices("gpu" if gpu else "cpu")[0]
    tdev = torch.device(args.device)
    data = load_dataset(ml_collections.ConfigDict(
        {"name": "mnist", "num_train": 60000, "num_test": args.num_test, "seed": 0}))  # fmt: skip
    result = {
        "machine": machine_info(
            device=str(jdev),
            torchattacks=torchattacks.__version__,
            layers=args.layers,
            load_average_start=list(os.getloadavg()),
        ),
        "setup": {
            "eps": EPS,
            "norm": "linf",
            "pgd": {"num_steps": 40, "step_size": 0.01, "random_start": True, "loss": "ce"},
            "ensemble": {
                "apgd_ce": {"num_steps": args.apgd_steps, "loss": "ce", "rho": 0.75},
                "apgd_t": {"num_steps": args.apgd_steps, "num_targets": 9, "loss": "dlr"},
                "square": {"num_queries": args.square_queries, "p_init": 0.8},
                "order": "APGD-CE on the clean-correct points, then each stage on the "
                "points every earlier stage left robust (per side)",
            },
            "rounds": {"pgd": args.rounds, "ensemble": args.ensemble_rounds},
            "timing": "interleaved rounds, medians; compile times apart; memory: peak "
            "resident-set growth during the first round (XLA temp buffers for advjax too)",
            "settle_s_before_each_side": 0.0 if args.device.startswith("cuda") else SETTLE_S,
            "ratio": "advjax time / torchattacks time (below 1: advjax faster)",
        },
        "models": {},
    }

    for name in args.models.split(","):
        result["models"][name] = bench_model(name, data, args, jdev, tdev, train_steps, ens_n)
        result["machine"]["load_average_end"] = list(os.getloadavg())
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with open(out_path, "w") as fh:
            json.dump(result, fh, indent=2)
    print(f"wrote {out_path}")
    return result


def bench_model(name, data, args, jdev, tdev, train_steps, ens_n):
    """PGD-40 and the ensemble on one model; returns its JSON entry."""
    import torch
    import torchattacks

    module, variables, train_s = adversarially_trained(
        name, data, steps=int(train_steps.get(name, 300))
    )
    net = torch_model(name, variables, tdev)
    x_np, y_np = data.test_x, data.test_y
    x_j, y_j = jax.device_put(jnp.asarray(x_np), jdev), jax.device_put(jnp.asarray(y_np), jdev)
    x_t = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(tdev)
    y_t = torch.from_numpy(y_np.astype(np.int64)).to(tdev)
    logits_j = jit(module.apply)
    with full_precision(), torch.no_grad():
        full = jit(module.apply)(variables, x_j)
        gap = float(np.abs(net(x_t).cpu().numpy() - np.asarray(full)).max())
    assert gap < 1e-3, f"{name}: flax and torch logits differ by {gap}"
    correct = np.argmax(np.asarray(logits_j(variables, x_j)), 1) == y_np
    print(f"{name}: clean {correct.mean():.4f}, max |logit gap| {gap:.2e}", flush=True)

    def robust_j(xa, yy):
        return np.argmax(np.asarray(logits_j(variables, xa)), 1) == np.asarray(yy)

    def robust_t(xa, yy):
        with torch.no_grad():
            return (net(xa).argmax(1) == yy).cpu().numpy()

    entry = {
        "weights": f"flax init seed 0, {train_steps.get(name, 300)} PGD-AT steps "
        "(3 steps, eps ramped to 0.3, batch 128, Adam 1e-3), copied to torch",
        "train_time_s": round(train_s, 1),
        "max_logit_gap": gap,
        "clean_accuracy": float(correct.mean()),
    }

    # PGD-40 -----------------------------------------------------------------
    pgd_stage = AdvjaxStage(
        module,
        variables,
        lambda f, x, y, k: pgd(f, x, y, k, eps=EPS, step_size=0.01, num_steps=40),
        jdev,
    )
    pgd_stage.compile(x_j, y_j, jax.random.key(0))
    ta_pgd = torchattacks.PGD(net, eps=EPS, alpha=0.01, steps=40, random_start=True)
    gen = torch.Generator(device=tdev).manual_seed(0)
    ta_pgd(x_t[:4], y_t[:4])  # warm-up
    plain_torch_pgd(net, x_t[:4], y_t[:4], eps=EPS, alpha=0.01, steps=1, generator=gen)
    times, outs, memory = interleaved(
        {
            "advjax": lambda: pgd_stage(x_j, y_j, jax.random.key(0)),
            "torchattacks": lambda: ta_pgd(x_t, y_t),
            "plain_torch": lambda: plain_torch_pgd(
                net, x_t, y_t, eps=EPS, alpha=0.01, steps=40, generator=gen
            ),
        },
        args.rounds,
        args.device,
    )
    med = {k: median(v) for k, v in times.items()}
    entry["pgd40"] = {
        "num_images": int(x_np.shape[0]),
        "median_s": med,
        "all_rounds_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "ratio_advjax_over_torchattacks": round(med["advjax"] / med["torchattacks"], 3),
        "ratio_advjax_over_plain_torch": round(med["advjax"] / med["plain_torch"], 3),
        "advjax_compile_s": round(pgd_stage.compile_s, 2),
        "advjax_xla_temp_mb": round(pgd_stage.temp_mb, 1),
        "peak_rss_growth_mb": memory,
        "robust_accuracy": {
            "advjax": float(robust_j(outs["advjax"], y_j).mean()),
            "torchattacks": float(robust_t(outs["torchattacks"], y_t).mean()),
            "plain_torch": float(robust_t(outs["plain_torch"], y_t).mean()),
        },
    }
    print(f"{name} PGD-40: {entry['pgd40']}", flush=True)

    # Ensemble, stage by stage ------------------------------------------------
    if not args.skip_ensemble:
        entry["ensemble"] = ensemble(
            name, module, variables, net, x_np, y_np, correct, int(ens_n.get(name, 64)),
            args, jdev, tdev, robust_j, robust_t,
        )  # fmt: skip
    return entry


def ensemble(name, module, variables, net, x_np, y_np, correct, n, args, jdev, tdev,
             robust_j, robust_t):  # fmt: skip
    """APGD-CE, APGD-T, Square on the first ``n`` images, each stage on the points the
    earlier ones left robust; both sides in interleaved rounds."""
    import torch
    import torchattacks

    steps, queries = args.apgd_steps, args.square_queries
    stages = {
        "apgd_ce": (
            AdvjaxStage(module, variables, lambda f, x, y, k: apgd(
                f, x, y, k, eps=EPS, num_steps=steps, loss="ce"), jdev),
            torchattacks.APGD(net, norm="Linf", eps=EPS, steps=steps, n_restarts=1, loss="ce",
                              seed=0),
        ),
        "apgd_t": (
            AdvjaxStage(module, variables, lambda f, x, y, k: apgd_targeted(
                f, x, y, k, eps=EPS, num_steps=steps, num_targets=9), jdev),
            torchattacks.APGDT(net, norm="Linf", eps=EPS, steps=steps, n_restarts=1,
                               n_classes=10, seed=0),
        ),
        "square": (
            AdvjaxStage(module, variables, lambda f, x, y, k: square(
                f, x, y, k, eps=EPS, num_queries=queries, p_init=0.8), jdev),
            torchattacks.Square(net, norm="Linf", eps=EPS, n_queries=queries, n_restarts=1,
                                p_init=0.8, loss="margin", seed=0),
        ),
    }  # fmt: skip
    x_np, y_np, start = x_np[:n], y_np[:n], correct[:n]

    def run_advjax():
        alive, per_stage = start.copy(), {}
        xs, ys = jax.device_put(jnp.asarray(x_np), jdev), jax.device_put(jnp.asarray(y_np), jdev)
        for i, (stage, (adv, _)) in enumerate(stages.items()):
            idx = np.flatnonzero(alive)
            t0 = time.perf_counter()
            if idx.size:
                x_adv = adv(xs[idx], ys[idx], jax.random.key(i))
                alive[idx] = robust_j(x_adv, ys[idx])
            per_stage[stage] = (time.perf_counter() - t0, int(idx.size), float(alive.mean()))
        return per_stage

    def run_torch():
        alive, per_stage = start.copy(), {}
        xs = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(tdev)
        ys = torch.from_numpy(y_np.astype(np.int64)).to(tdev)
        for stage, (_, ta) in stages.items():
            idx = np.flatnonzero(alive)
            t0 = time.perf_counter()
            if idx.size:
                ti = torch.from_numpy(idx).to(tdev)
                x_adv = ta(xs[ti], ys[ti])
                alive[idx] = robust_t(x_adv, ys[ti])
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            per_stage[stage] = (time.perf_counter() - t0, int(idx.size), float(alive.mean()))
        return per_stage

    # A first advjax pass compiles every stage for its input shape (timed apart).
    t0 = time.perf_counter()
    run_advjax()
    first_s = time.perf_counter() - t0
    rounds = {"advjax": [], "torchattacks": []}

    def recorded(side, fn):
        return lambda: rounds[side].append(fn()) or rounds[side][-1]

    times, outs, memory = interleaved(
        {
            "advjax": recorded("advjax", run_advjax),
            "torchattacks": recorded("torchattacks", run_torch),
        },
        args.ensemble_rounds,
        args.device,
    )
    # The per-stage times of every round.
    report = {"num_images": n, "stages": {}}
    for side in ("advjax", "torchattacks"):
        report[f"{side}_total_median_s"] = median(times[side])
    for stage in stages:
        med = {}
        for side in ("advjax", "torchattacks"):
            med[side] = round(statistics.median(r[stage][0] for r in rounds[side]), 3)
        report["stages"][stage] = {
            "median_s": med,
            # No ratio for a stage left without points on either side.
            "ratio_advjax_over_torchattacks": (
                round(med["advjax"] / med["torchattacks"], 3) if med["torchattacks"] > 0 else None
            ),
            "points_attacked": {s: outs[s][stage][1] for s in outs},
            "robust_accuracy_after": {s: outs[s][stage][2] for s in outs},
            "advjax_compile_s": round(stages[stage][0].compile_s, 2),
            "advjax_xla_temp_mb": round(stages[stage][0].temp_mb, 1),
        }
    report["ratio_advjax_over_torchattacks"] = round(
        report["advjax_total_median_s"] / report["torchattacks_total_median_s"], 3
    )
    report["advjax_first_run_s"] = round(first_s, 2)
    report["peak_rss_growth_mb"] = memory
    report["robust_accuracy"] = {s: outs[s]["square"][2] for s in outs}
    print(f"{name} ensemble: {report}", flush=True)
    return report


if __name__ == "__main__":
    main()
