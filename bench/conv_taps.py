"""Benchmark: first-layer convolutions as sums over their taps against XLA:CPU's
convolution and PyTorch (oneDNN), on the same inputs.

A first layer sees 1-3 input channels, so one side of its contraction is a handful of
numbers: for the input gradient, the 25 taps of a 5x5 kernel on a 1-channel image.
XLA:CPU's convolution is slow on such shapes, and `advjax.models.layers` runs stride-1
convolutions whose kernels have at most `layers._TAPS_AT_MOST` taps another way:

* forward (`layers._conv_taps`): the sum over taps of the shifted input channel times
  the kernel's row of output channels, one elementwise fusion; under differentiation
  one matrix product of the shifted pixels with the kernel instead (timed here as
  "taps product"; `bench/taps_shared.py` times both forms in whole training steps);
* input gradient (`layers._input_gradient_taps`): one matrix product of the output
  cotangent with the kernel (every tap's contribution at once), then a sum of shifted
  slices.

For each layer below the script compiles, with advjax's compile options
(`advjax.compile.jit`), ``layers.conv2d`` and ``layers.conv_input_gradient`` (the taps
forms) and the same two maps as single XLA convolutions (the forms advjax used before),
and times them against torch's ``conv2d`` and ``conv2d_input`` in interleaved rounds
(`attacks.interleaved`). Reported: medians (first round left out), ratios to torch and
to XLA's convolution, and the largest difference between the forms relative to the
largest value. Nothing is set in the environment.

Run: ``.venv/bin/python bench/conv_taps.py [--rounds N] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import os
import statistics
import sys

import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attacks as harness  # noqa: E402  (bench/attacks.py: timing and result helpers)
from conv_options import relative_difference  # noqa: E402

from advjax.compile import jit  # noqa: E402
from advjax.models import layers  # noqa: E402

# Name -> (image size, kernel size, in channels, out channels); stride 1, SAME padding.
LAYERS = {
    "madry_cnn conv1 (5x5, 1 -> 32, 28x28)": (28, 5, 1, 32),
    "3x3, 1 -> 32, 28x28": (28, 3, 1, 32),
    "3x3, 3 -> 16, 32x32": (32, 3, 3, 16),
}


def forms(size: int, k: int):
    """name -> jax function of the (taps, XLA convolution) forms of both maps."""
    p = k // 2
    pads = ((p, p), (p, p))

    def xla_input_gradient(g, w):
        flipped = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
        return lax.conv_general_dilated(
            g, flipped, (1, 1), pads, dimension_numbers=layers._DIMENSION_NUMBERS
        )

    return {
        "forward/taps": lambda x, w: layers.conv2d(x, w, padding="SAME"),
        "forward/taps product": lambda x, w: layers._conv_taps(x, w, pads, shared=True),
        "forward/xla convolution": lambda x, w: layers._conv(x, w, (1, 1), pads),
        "input gradient/taps": lambda g, w: layers.conv_input_gradient(
            g, w, (size, size), (1, 1), pads
        ),
        "input gradient/xla convolution": xla_input_gradient,
    }


def main(argv=None):
    args = harness.repeated_calls_args(__doc__, argv, quick_reps=2)
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    table = {}
    for layer, (size, k, cin, cout) in LAYERS.items():
        assert k * k * cin <= layers._TAPS_AT_MOST, layer
        x = rng.uniform(size=(args.batch, size, size, cin)).astype(np.float32)
        w = (rng.normal(size=(k, k, cin, cout)) / k).astype(np.float32)
        g = rng.normal(size=(args.batch, size, size, cout)).astype(np.float32)
        xj, wj, gj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)
        inputs = {"forward": (xj, wj), "input gradient": (gj, wj)}
        runs, outs = {}, {}
        for name, fn in forms(size, k).items():
            compiled = jit(fn)
            args_ = inputs[name.split("/")[0]]
            outs[name] = np.asarray(compiled(*args_))
            runs[name] = harness.timed_loop(compiled, args_, args.reps)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
        gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
        torch_fns = {
            "forward/torch": lambda xt=xt, wt=wt, k=k: F.conv2d(xt, wt, padding=k // 2),
            "input gradient/torch": lambda xt=xt, wt=wt, gt=gt, k=k: torch.nn.grad.conv2d_input(
                xt.shape, wt, gt, padding=k // 2
            ),
        }
        with torch.no_grad():
            for name, fn in torch_fns.items():
                outs[name] = fn().permute(0, 2, 3, 1).numpy()
                runs[name] = harness.torch_loop(fn, args.reps)
        times, _, _ = harness.interleaved(runs, args.rounds, "cpu")
        ms = {n: 1e3 * statistics.median(v[1:] or v) / args.reps for n, v in times.items()}
        rows = {}
        for prog in ("forward", "input gradient"):
            taps, xla, ref = (ms[f"{prog}/{f}"] for f in ("taps", "xla convolution", "torch"))
            reference = outs[f"{prog}/xla convolution"]
            rows[prog] = {
                "ms": {
                    "taps": round(taps, 2),
                    "xla_convolution": round(xla, 2),
                    "torch": round(ref, 2),
                },  # fmt: skip
                "ratio_taps_to_torch": round(taps / ref, 3),
                "ratio_taps_to_xla_convolution": round(taps / xla, 3),
                "ratio_xla_convolution_to_torch": round(xla / ref, 3),
                "max_relative_difference": {
                    "taps": relative_difference(outs[f"{prog}/taps"], reference),
                    "torch": relative_difference(outs[f"{prog}/torch"], reference),
                },
            }
        # The form used under differentiation (`layers._conv_taps`, ``shared=True``).
        product = ms["forward/taps product"]
        rows["forward"]["ms"]["taps_product"] = round(product, 2)
        rows["forward"]["ratio_taps_product_to_torch"] = round(product / ms["forward/torch"], 3)
        rows["forward"]["max_relative_difference"]["taps_product"] = relative_difference(
            outs["forward/taps product"], outs["forward/xla convolution"]
        )
        table[layer] = rows
        print(layer)
        for prog, r in rows.items():
            t = r["ms"]
            print(
                f"  {prog:15s} taps {t['taps']:6.2f} ms  xla conv {t['xla_convolution']:6.2f} ms"
                f"  torch {t['torch']:6.2f} ms  taps/torch {r['ratio_taps_to_torch']:.2f}"
                f"  taps/xla {r['ratio_taps_to_xla_convolution']:.2f}"
                f"  rel. diff {r['max_relative_difference']['taps']:.1e}"
                + (f"  product {t['taps_product']:6.2f} ms" if "taps_product" in t else "")
            )
    result = {
        "machine": harness.machine_info(load_average_end=list(os.getloadavg())),
        "setup": {
            "batch": args.batch,
            "calls_per_round": args.reps,
            "rounds": args.rounds,
            "median_over": "rounds after the first",
            "stride_padding": "stride 1, SAME",
            "taps_at_most": layers._TAPS_AT_MOST,
            "ratio": "ms / ms (below 1: the first is faster)",
            "max_relative_difference": "largest absolute difference from the XLA convolution "
            "over its largest absolute value",
        },
        "layers": table,
    }
    harness.write_result(result, "conv_taps", args)


if __name__ == "__main__":
    main()
