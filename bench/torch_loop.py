"""A plain PyTorch training loop in a process of its own, driven by `train_step.py`.

The benchmarks' PyTorch twins of advjax's MNIST models are built here (`torch_net`), with
torch and numpy alone. Run as a script, this module is the reference of
`bench/train_step.py`: a process that imports neither JAX nor advjax, so it allocates
memory as PyTorch does by default (advjax sets glibc's allocator for its own process,
`advjax.hostmem`, unless ``ADVJAX_MALLOC=0``). It reads the network's weights (a
``state_dict`` file) and the batches (``.npz``: ``x`` NCHW float32, ``y`` int64, one row
of batches per step), then answers one JSON line per command on stdin:

* ``first``: one step on batch 0; ``{"loss": ...}``;
* ``round R``: steps on batches ``1 + R * steps`` to ``(R + 1) * steps``; ``{"s_per_step":
  ..., "loss": ..., "peak_rss_mb": ...}`` (seconds timed around the loop, after a device
  synchronisation; the process's peak resident memory so far);
* ``quit``.

A step is ``zero_grad / cross_entropy / backward / Adam(lr) step``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def torch_net(name: str, *, c0: int = 16, c1: int = 32, hidden: int = 100):
    """The PyTorch twin of advjax's ``madry_cnn`` or ``small_cnn`` (NCHW), untrained;
    ``c0``, ``c1`` and ``hidden`` size the small CNN."""
    from torch import nn

    if name == "madry_cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Linear(1024, 10),
        )  # fmt: skip
    if name == "small_cnn":
        return nn.Sequential(
            nn.Conv2d(1, c0, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c0, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(7 * 7 * c1, hidden), nn.ReLU(), nn.Linear(hidden, 10),
        )  # fmt: skip
    raise ValueError(f"no PyTorch twin for model {name!r}")


def train_step(net, opt, xb, yb):
    """One textbook PyTorch step: ``zero_grad``, cross-entropy, ``backward``, ``opt.step``;
    returns the loss (the reference step of `bench/train_step.py`, in either process)."""
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(xb), yb)
    loss.backward()
    opt.step()
    return loss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--state", required=True, help="torch.save'd state_dict of the net")
    ap.add_argument("--batches", required=True, help=".npz with x (steps, B, 1, 28, 28), y")
    ap.add_argument("--steps", type=int, required=True, help="steps per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    state = torch.load(args.state, map_location="cpu", weights_only=True)
    sizes = {}
    if args.model == "small_cnn":
        sizes = dict(c0=state["0.weight"].shape[0], c1=state["2.weight"].shape[0],
                     hidden=state["5.weight"].shape[0])  # fmt: skip
    net = torch_net(args.model, **sizes)
    net.load_state_dict(state)
    net = net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    with np.load(args.batches) as f:
        xs = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in f["x"]]
        ys = [torch.from_numpy(y.astype(np.int64)).to(device) for y in f["y"]]

    def step(b):
        return train_step(net, opt, xs[b], ys[b])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def reply(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "first":
            reply({"loss": float(step(0))})
        elif command[0] == "round":
            r = int(command[1])
            sync()
            t0 = time.perf_counter()
            for b in range(1 + r * args.steps, 1 + (r + 1) * args.steps):
                loss = step(b)
            sync()
            seconds = (time.perf_counter() - t0) / args.steps
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            reply({"s_per_step": seconds, "loss": float(loss), "peak_rss_mb": peak})
        else:
            reply({"error": f"unknown command {line.strip()!r}"})


if __name__ == "__main__":
    main()
