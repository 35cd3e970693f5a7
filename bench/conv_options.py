"""Benchmark: the Madry CNN's second convolution under each XLA:CPU library option of the
installed jaxlib, against PyTorch (oneDNN) on the same inputs.

The Madry CNN's training step is slower than PyTorch's on a CPU, and
`bench/train_step_parts.py` puts the difference in its second convolution (5x5, 32 to
64 channels, on 14x14 maps). XLA:CPU can hand operations to libraries through compile
options; advjax sets one of them (`advjax.compile.CPU_OPTIONS`: YNNPACK for matrix
products, which also changes how convolutions lower). This script asks whether another
option of the installed jaxlib runs that convolution faster.

For every option set below it compiles three programs with ``jax.jit(...,
compiler_options=...)`` on batch 128 (the training step's batch):

* ``forward``: the convolution, SAME padding, NHWC/HWIO;
* ``input gradient``: `advjax.models.layers.conv_input_gradient` (a plain convolution
  of the output cotangent with the flipped, channel-swapped kernel);
* ``kernel gradient``: the kernel's cotangent through `advjax.models.layers.conv2d`;
* ``forward, product of given columns``: the forward convolution's matrix product
  alone, ``[batch*14*14, 800] @ [800, 64]``, with the shifted input pixels (the im2col
  columns) computed beforehand in NumPy and passed in. No formulation of the
  convolution as one matrix product can run faster than this on a given library, so it
  is a floor for every im2col variant.

PyTorch runs ``conv2d``, ``conv2d_input`` and ``conv2d_weight`` on the same arrays
(NCHW); the columns' product is compared with PyTorch's whole convolution (``conv2d``,
the time to beat). Each program's largest difference from the program compiled
without options (relative to its largest value) is reported too: a difference shows
that another kernel ran (0.0 says XLA:CPU ran the same code, whatever the option). An option set
the installed jaxlib rejects is reported with jaxlib's message. Programs run in
interleaved rounds after a short rest (`attacks.settle`); reported are medians (the
first round left out) and ratios to torch (below 1: faster than torch). Nothing is
set in the environment.

Run: ``.venv/bin/python bench/conv_options.py [--rounds N] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attacks as harness  # noqa: E402  (bench/attacks.py: timing and result helpers)

from advjax.compile import CPU_OPTIONS  # noqa: E402
from advjax.models import layers  # noqa: E402

_LIB = "xla_cpu_experimental_{}_fusion_type"
_CONV = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"

# Name -> compile options. "advjax default" is what every advjax program gets on a CPU.
OPTION_SETS: dict[str, dict] = {
    "none": {},
    "advjax default (YNNPACK dot)": dict(CPU_OPTIONS),
    "YNNPACK convolution": {_LIB.format("ynn"): _CONV},
    "YNNPACK dot + convolution": {_LIB.format("ynn"): "LIBRARY_FUSION_TYPE_DOT," + _CONV},
    "XNNPACK dot": {"xla_cpu_use_xnnpack": True, _LIB.format("xnn"): "LIBRARY_FUSION_TYPE_DOT"},
    "XNNPACK convolution": {"xla_cpu_use_xnnpack": True, _LIB.format("xnn"): _CONV},
    "oneDNN": {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_custom_call": True},
    "oneDNN convolution": {"xla_cpu_use_onednn": True, _LIB.format("onednn"): _CONV},
}

PADS = ((2, 2), (2, 2))


def relative_difference(a: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference over the largest absolute value of ``reference``."""
    return float(np.abs(a - reference).max() / np.abs(reference).max())


def programs():
    """The three jax functions timed, by name."""

    def forward(x, k):
        return layers.conv2d(x, k, padding="SAME")

    def input_gradient(g, k):
        return layers.conv_input_gradient(g, k, (14, 14), (1, 1), PADS)

    def kernel_gradient(x, k, g):
        return jax.vjp(lambda kk: layers.conv2d(x, kk, padding="SAME"), k)[1](g)[0]

    def columns_product(columns, k):
        n = columns.shape[0] // (14 * 14)
        return (columns @ k.reshape(-1, k.shape[-1])).reshape(n, 14, 14, k.shape[-1])

    return {
        "forward": forward,
        "input gradient": input_gradient,
        "kernel gradient": kernel_gradient,
        COLUMNS: columns_product,
    }


COLUMNS = "forward, product of given columns"


def im2col(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """``[n*h*w, kh*kw*c]`` rows of the SAME-padded input's shifted pixels, ordered
    ``(i, j, c)`` like an HWIO kernel's rows."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    taps = [padded[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)]
    return np.concatenate(taps, axis=-1).reshape(n * h * w, kh * kw * c)


def main(argv=None):
    args = harness.repeated_calls_args(__doc__, argv, quick_reps=2)
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 14, 14, 32)).astype(np.float32)
    k = (0.05 * rng.normal(size=(5, 5, 32, 64))).astype(np.float32)
    g = rng.normal(size=(args.batch, 14, 14, 64)).astype(np.float32)
    xj, kj, gj = jnp.asarray(x), jnp.asarray(k), jnp.asarray(g)
    inputs = {
        "forward": (xj, kj),
        "input gradient": (gj, kj),
        "kernel gradient": (xj, kj, gj),
        COLUMNS: (jnp.asarray(im2col(x, 5, 5)), kj),
    }

    runs, compile_s, rejected, difference, reference = {}, {}, {}, {}, {}
    for opt_name, options in OPTION_SETS.items():
        for prog, fn in programs().items():
            key = f"{prog}/{opt_name}"
            t0 = time.perf_counter()
            try:
                compiled = jax.jit(fn, compiler_options=options).lower(*inputs[prog]).compile()
            except Exception as e:  # jaxlib without the option: report its message
                rejected[opt_name] = str(e).splitlines()[0][:300]
                break
            compile_s[key] = round(time.perf_counter() - t0, 2)
            out = np.asarray(compiled(*inputs[prog]))
            # The columns' product computes the forward convolution: same reference.
            reference.setdefault(prog, reference.get("forward") if prog == COLUMNS else out)
            difference[key] = relative_difference(out, reference[prog])
            runs[key] = harness.timed_loop(compiled, inputs[prog], args.reps)

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous()
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
    torch_fns = {
        "forward": lambda: F.conv2d(xt, kt, padding=2),
        "input gradient": lambda: torch.nn.grad.conv2d_input(xt.shape, kt, gt, padding=2),
        "kernel gradient": lambda: torch.nn.grad.conv2d_weight(xt, kt.shape, gt, padding=2),
    }
    torch_check = {
        "forward": lambda o: o.permute(0, 2, 3, 1),
        "input gradient": lambda o: o.permute(0, 2, 3, 1),
        "kernel gradient": lambda o: o.permute(2, 3, 1, 0),
    }
    # The columns' product against PyTorch's whole convolution: the time to beat.
    torch_fns[COLUMNS], torch_check[COLUMNS] = torch_fns["forward"], torch_check["forward"]
    torch_difference = {}
    with torch.no_grad():
        for prog, fn in torch_fns.items():
            got = torch_check[prog](fn()).numpy()
            torch_difference[prog] = relative_difference(got, reference[prog])
            runs[f"{prog}/torch"] = harness.torch_loop(fn, args.reps)

        times, _, _ = harness.interleaved(runs, args.rounds, "cpu")
    ms = {k: 1e3 * statistics.median(v[1:] or v) / args.reps for k, v in times.items()}

    table = {}
    for prog in programs():
        torch_ms = ms[f"{prog}/torch"]
        rows = {
            "torch": {"ms": round(torch_ms, 2), "max_relative_difference": torch_difference[prog]}
        }
        for opt_name in OPTION_SETS:
            key = f"{prog}/{opt_name}"
            if key in ms:
                rows[opt_name] = {
                    "ms": round(ms[key], 2),
                    "ratio_to_torch": round(ms[key] / torch_ms, 3),
                    "max_relative_difference": difference[key],
                    "compile_s": compile_s[key],
                }
        table[prog] = rows
    result = {
        "machine": harness.machine_info(load_average_end=list(os.getloadavg())),
        "setup": {
            "layer": "madry_cnn conv2: 5x5, 32 -> 64 channels, 14x14 maps, SAME",
            "batch": args.batch,
            "calls_per_round": args.reps,
            "rounds": args.rounds,
            "median_over": "rounds after the first",
            "ratio": "ms / torch ms (below 1: faster than torch)",
            "max_relative_difference": "largest absolute difference over the largest "
            "absolute value of the program compiled without options (torch: the same)",
        },
        "option_sets": OPTION_SETS,
        "rejected_by_jaxlib": rejected,
        "programs": table,
    }
    for prog, rows in table.items():
        print(prog)
        for name, v in rows.items():
            ratio = f"ratio {v['ratio_to_torch']:.2f}" if "ratio_to_torch" in v else ""
            diff = v["max_relative_difference"]
            print(f"  {name:30s} {v['ms']:7.2f} ms  {ratio:12s} rel. diff {diff:.1e}")
    for name, why in rejected.items():
        print(f"rejected by jaxlib: {name}: {why}")
    harness.write_result(result, "conv_options", args)


if __name__ == "__main__":
    main()
