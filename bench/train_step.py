"""Benchmark: one advjax/flax training step against a plain PyTorch training loop.

A step is forward, cross-entropy, backward and an Adam update (lr 1e-3) on a batch of
128 MNIST training images, for ``small_cnn`` and ``madry_cnn`` starting from the same
weights (the flax initialisation copied into torch; the first step's losses are
asserted to agree). The flax step is one jitted function with the parameters and
optimiser state donated (what advjax's training loop compiles); the torch step is the
textbook ``zero_grad / backward / step``.

PyTorch runs twice, on the same weights and batches:

* ``plain_torch``, the reference of record: `torch_loop.py` in a process of its own,
  which imports neither JAX nor advjax, so PyTorch allocates memory as it does for a
  user who runs a plain loop;
* ``torch_same_process``: the same loop in this process. advjax sets glibc's allocator
  for the process (`advjax.hostmem`), so this loop shows what PyTorch gets from the
  same setting; with ``ADVJAX_MALLOC=0`` the two PyTorch rows time the same thing.

Steps run in interleaved rounds of ``--steps`` steps each (advjax, plain_torch,
torch_same_process), each side after a short rest on a CPU (``attacks.settle``: the
other sides' threads go idle first); reported are the median seconds per step, the
ratios (advjax over each torch: below 1 means advjax is faster), the compile time
apart, peak memory and the machine's load average. Nothing is set in the environment.

Run: ``.venv/bin/python bench/train_step.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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
    RESULTS,
    SETTLE_S,
    PeakRSS,
    build_flax,
    full_precision,
    machine_info,
    settle,
    synchronize,
    torch_model,
)
from torch_loop import train_step  # noqa: E402

from advjax import losses, models  # noqa: E402
from advjax.compile import jit  # noqa: E402
from advjax.data import load_dataset  # noqa: E402


def flax_step(module, opt):
    def step(variables, state, xb, yb):
        def loss(v):
            return losses.cross_entropy(module.apply(v, xb), yb).mean()

        value, grads = jax.value_and_grad(loss)(variables)
        updates, state = opt.update(grads, state, variables)
        return optax.apply_updates(variables, updates), state, value

    return jit(step, donate_argnums=(0, 1))


class PlainTorch:
    """`torch_loop.py` in a subprocess for one model: ``ask(command)`` -> its JSON answer."""

    def __init__(self, name: str, folder: str, args):
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
               "torch_loop.py"), "--model", name, "--state", f"{folder}/state.pt",
               "--batches", f"{folder}/batches.npz", "--steps", str(args.steps),
               "--device", args.device, "--threads", str(args.torch_threads)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch_loop.py ended (exit code {self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"torch_loop.py: {answer['error']}")
        return answer

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ends the process, also after an error on either side."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:  # It ended meanwhile.
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="small_cnn,madry_cnn")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", choices=("advjax", "flax"), default="advjax")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: torch's default). On a loaded CPU torch's default "
        "OpenMP threads spin against the other jobs and run up to 10x slower than one "
        "thread; one thread is then the stronger baseline",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 5, 2
    if args.layers == "flax":
        from attacks import use_flax_layers

        use_flax_layers()
    gpu = args.device.startswith("cuda")
    out_path = args.out or os.path.join(
        RESULTS,
        ("gpu-" if gpu else "")
        + "train_step"
        + ("-flax-layers" if args.layers == "flax" else "")
        + ("-quick" if args.quick else "")
        + ".json",
    )

    import torch
    import torch.nn.functional as F

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    jdev = jax.devices("gpu" if gpu else "cpu")[0]
    tdev = torch.device(args.device)
    data = load_dataset(ml_collections.ConfigDict(
        {"name": "mnist", "num_train": 60000, "num_test": 16, "seed": 0}))  # fmt: skip
    n_batches = args.steps * args.rounds + 1
    rng = np.random.default_rng(0)
    idx = rng.integers(0, data.train_x.shape[0], (n_batches, args.batch))
    result = {
        "machine": machine_info(
            device=str(jdev), layers=args.layers, load_average_start=list(os.getloadavg())
        ),
        "setup": {
            "batch": args.batch,
            "step": "forward, cross-entropy, backward, Adam(1e-3) update",
            "steps_per_round": args.steps,
            "settle_s_before_each_side": 0.0 if gpu else SETTLE_S,
            "rounds": args.rounds,
            "ratio": "advjax seconds per step / torch seconds per step (below 1: advjax faster)",
            "plain_torch": "bench/torch_loop.py in a process of its own (PyTorch's allocator "
            "defaults); torch_same_process: the same loop in this process (with advjax's "
            "allocator settings unless ADVJAX_MALLOC=0, see machine.advjax_compile_options)",
        },
        "models": {},
    }
    for name in args.models.split(","):
        module = build_flax(name)
        init = models.init_variables(module, MNIST, jax.random.key(0))
        net = torch_model(name, init, tdev).train()
        opt = optax.adam(1e-3)
        step = flax_step(module, opt)
        variables = jax.device_put(jax.tree.map(jnp.array, init), jdev)
        state = opt.init(variables)
        t_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        xs_j = [jax.device_put(jnp.asarray(data.train_x[i]), jdev) for i in idx]
        ys_j = [jax.device_put(jnp.asarray(data.train_y[i]), jdev) for i in idx]
        xs_t = [torch.from_numpy(np.ascontiguousarray(data.train_x[i].transpose(0, 3, 1, 2)))
                .to(tdev) for i in idx]  # fmt: skip
        ys_t = [torch.from_numpy(data.train_y[i].astype(np.int64)).to(tdev) for i in idx]

        def torch_step(xb, yb, net=net, t_opt=t_opt):
            return train_step(net, t_opt, xb, yb)

        # Same weights: the first batch's loss at float32 precision on both sides (on a GPU
        # the timed steps run at each framework's default, TF32 convolutions).
        with full_precision(), torch.no_grad():
            loss_full = jit(
                lambda v, x, y, m=module: losses.cross_entropy(m.apply(v, x), y).mean()
            )(variables, xs_j[0], ys_j[0])
            full_gap = abs(float(loss_full) - float(F.cross_entropy(net(xs_t[0]), ys_t[0])))
        assert full_gap < 1e-4, f"{name}: first-batch losses differ by {full_gap}"
        # The plain loop's process starts from the same weights and batches.
        tmp = tempfile.mkdtemp(prefix="advjax-train-step-")
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, f"{tmp}/state.pt")
        np.savez(f"{tmp}/batches.npz", x=data.train_x[idx].transpose(0, 1, 4, 2, 3),
                 y=data.train_y[idx].astype(np.int64))  # fmt: skip
        plain = None
        try:
            plain = PlainTorch(name, tmp, args)
            t0 = time.perf_counter()
            compiled = step.lower(variables, state, xs_j[0], ys_j[0]).compile()
            compile_s = time.perf_counter() - t0
            variables, state, loss_j = compiled(variables, state, xs_j[0], ys_j[0])
            loss_t = torch_step(xs_t[0], ys_t[0])
            gap = abs(float(loss_j) - float(loss_t))
            plain_gap = abs(float(loss_j) - plain.ask("first")["loss"])
            times = {"advjax": [], "plain_torch": [], "torch_same_process": []}
            memory = {}
            carry = {"v": variables, "s": state}
            losses_end = {}
            for r in range(args.rounds):
                batches = range(1 + r * args.steps, 1 + (r + 1) * args.steps)
                for side in times:
                    settle(args.device)
                    if side == "plain_torch":
                        answer = plain.ask(f"round {r}")
                        times[side].append(answer["s_per_step"])
                        losses_end[side] = answer["loss"]
                        memory[side] = {"process_peak_rss_mb": round(answer["peak_rss_mb"], 1)}
                        continue
                    with PeakRSS() as peak:
                        t0 = time.perf_counter()
                        if side == "advjax":
                            for b in batches:
                                carry["v"], carry["s"], loss_j = compiled(
                                    carry["v"], carry["s"], xs_j[b], ys_j[b]
                                )
                            jax.block_until_ready(carry["v"])
                            losses_end[side] = float(loss_j)
                        else:
                            for b in batches:
                                loss_t = torch_step(xs_t[b], ys_t[b])
                            synchronize(args.device)
                            losses_end[side] = float(loss_t)
                        times[side].append((time.perf_counter() - t0) / args.steps)
                    memory[side] = max(memory.get(side, 0.0), peak.mb)
        finally:
            if plain is not None:
                plain.close()
            shutil.rmtree(tmp, ignore_errors=True)
        med = {k: round(statistics.median(v), 5) for k, v in times.items()}
        mem = compiled.memory_analysis()
        entry = {
            "first_batch_loss_gap_float32": full_gap,
            "first_step_loss_gap": gap,
            "median_s_per_step": med,
            "all_rounds_s_per_step": {k: [round(t, 5) for t in v] for k, v in times.items()},
            "ratio_advjax_over_plain_torch": round(med["advjax"] / med["plain_torch"], 3),
            "ratio_advjax_over_torch_same_process": round(
                med["advjax"] / med["torch_same_process"], 3
            ),
            "plain_torch_first_step_loss_gap": plain_gap,
            "advjax_compile_s": round(compile_s, 2),
            "advjax_xla_temp_mb": round(mem.temp_size_in_bytes / 2**20, 1) if mem else None,
            "peak_rss_growth_mb": memory,
            "final_loss": losses_end,
        }
        print(f"{name}: {entry}", flush=True)
        result["models"][name] = entry
        result["machine"]["load_average_end"] = list(os.getloadavg())
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with open(out_path, "w") as fh:
            json.dump(result, fh, indent=2)
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
