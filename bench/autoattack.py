"""Parity benchmark: advjax's AutoAttack ``standard`` version against the reference code.

Same weights and inputs on both sides: ``small_cnn`` (the default model of
``configs/mnist_fast.py``) adversarially trained for a few hundred steps by
``bench/attacks.py`` (cached) and copied weight for weight into PyTorch (logits
asserted to agree), the first 512 MNIST test images, l_inf eps 0.3.

* advjax: ``ensemble`` with ``version='standard'`` (APGD-CE, APGD-T, FAB-T, Square),
  each component on the points still robust, as `advjax.evaluation.evaluate` runs it.
* reference: AutoAttack's own code (PyPI ``pyautoattack`` 0.2.0, by its authors;
  ``pip install --no-deps pyautoattack``), ``AutoAttack(version='standard')``, its
  component objects called in its ``run_standard_evaluation`` order and with its
  settings, on the points still robust.

Reported: clean accuracy, robust accuracy after each component for both sides, the
final per-example agreement (robust on both, broken only by advjax, only by the
reference) and wall time per component (advjax's includes compilation, which is also
measured apart). Results: ``bench/results/autoattack.json``.

``--workdir runs/mnist_fast`` attacks the model of a launcher run instead (its best
checkpoint's evaluated parameters, as ``--mode eval`` restores them), and
``--components apgd-ce,apgd-t,square`` runs a subset in the same order on both sides
(the default recipe's ensemble has no FAB-T). Each side's black-box gap, the share of
the images that Square alone fools after the white-box components, is reported next to
the robust accuracies: it tells whether a gap is the model's or one side's attacks'.

Run: ``.venv/bin/python bench/autoattack.py [--num-test 512] [--seeds 0]
[--workdir runs/<run> --components apgd-ce,apgd-t,square --out <file>]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attacks import EPS, RESULTS, adversarially_trained, torch_model  # noqa: E402

from advjax import models  # noqa: E402
from advjax import runs as advjax_runs  # noqa: E402
from advjax.attacks import build_attack, fold_in_each, name_id  # noqa: E402
from advjax.checkpoints import CheckpointError  # noqa: E402
from advjax.compile import jit  # noqa: E402
from advjax.configlib import ConfigError  # noqa: E402
from advjax.data import load_dataset  # noqa: E402

REFERENCE_ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")


def run_advjax(module, variables, x, y, seed: int, components=REFERENCE_ORDER):
    """Robust flags after each component of advjax's standard version, and times."""
    attack = build_attack({"name": "ensemble", "eps": EPS, "norm": "linf", "version": "standard"})
    chosen = [c for c in attack.components if c.name.replace("_", "-") in components]
    assert [c.name.replace("_", "-") for c in chosen] == list(components), components
    model = models.eval_model(module, variables)
    logits = jit(module.apply)
    robust = np.argmax(np.asarray(logits(variables, x)), 1) == y
    keys = jax.random.split(jax.random.key(seed), x.shape[0])
    after, times, compile_times = {}, {}, {}
    for comp in chosen:
        idx = np.flatnonzero(robust)
        fn = jit(lambda m, xb, yb, kb, c=comp: c(m, xb, yb, kb, bounds=(0.0, 1.0)))
        args = (model, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        comp_keys = fold_in_each(keys[idx], name_id(comp.name))
        t0 = time.perf_counter()
        compiled = fn.lower(*args, comp_keys).compile()
        compile_times[comp.name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        x_adv = jax.block_until_ready(compiled(*args, comp_keys))
        times[comp.name] = round(time.perf_counter() - t0, 2)
        still = np.argmax(np.asarray(logits(variables, x_adv)), 1) == y[idx]
        robust[idx] &= still
        after[comp.name] = float(robust.mean())
        print(f"advjax {comp.name}: {robust.mean():.4f} ({times[comp.name]} s)", flush=True)
    return robust, after, times, compile_times


def run_reference(net, x, y, seed: int, components=REFERENCE_ORDER):
    """Robust flags after each component of the reference ``standard`` version."""
    import torch
    from pyautoattack import AutoAttack

    aa = AutoAttack(net, norm="Linf", eps=EPS, version="standard", seed=seed, device="cpu")
    x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(y.astype(np.int64))
    with torch.no_grad():
        robust = (net(x_t).argmax(1) == y_t).numpy()
    after, times = {}, {}
    for name in components:
        idx = np.flatnonzero(robust)
        xb, yb = x_t[idx], y_t[idx]
        t0 = time.perf_counter()
        # The branches of AutoAttack.run_standard_evaluation, with its settings.
        if name == "apgd-ce":
            aa.apgd.loss = "ce"
            aa.apgd.seed = aa.get_seed()
            adv = aa.apgd.perturb(xb, yb)
        elif name == "apgd-t":
            aa.apgd_targeted.seed = aa.get_seed()
            adv = aa.apgd_targeted.perturb(xb, yb)
        elif name == "fab-t":
            aa.fab.targeted = True
            aa.fab.n_restarts = 1
            aa.fab.seed = aa.get_seed()
            adv = aa.fab.perturb(xb, yb)
        else:
            aa.square.seed = aa.get_seed()
            adv = aa.square.perturb(xb, yb)
        times[name] = round(time.perf_counter() - t0, 2)
        with torch.no_grad():
            still = (net(adv).argmax(1) == yb).numpy()
            linf = float((adv - xb).abs().reshape(len(idx), -1).max(1)[0].max())
        assert linf <= EPS + 1e-5, (name, linf)
        robust[idx] &= still
        after[name] = float(robust.mean())
        print(f"reference {name}: {robust.mean():.4f} ({times[name]} s)", flush=True)
    return robust, after, times


def black_box_gap(after: dict, black_box: str = "square") -> float | None:
    """Share of the images that the black-box component alone fools: robust accuracy
    before it (after the white-box components) minus after it."""
    names = list(after)
    i = next((k for k, n in enumerate(names) if n.replace("_", "-") == black_box), None)
    if i is None or i == 0:
        return None
    return round(after[names[i - 1]] - after[names[i]], 6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-test", type=int, default=512)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--out", default=os.path.join(RESULTS, "autoattack.json"))
    parser.add_argument(
        "--workdir", default="", help="attack this launcher run's best checkpoint instead"
    )
    parser.add_argument(
        "--components", default=",".join(REFERENCE_ORDER), help="a subset, in this order"
    )
    args = parser.parse_args(argv)
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    # Unknown, repeated or reordered names all make the two lists differ.
    if not components or list(components) != [c for c in REFERENCE_ORDER if c in components]:
        parser.error(f"--components: a subset of {','.join(REFERENCE_ORDER)} in that order")
    import pyautoattack
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = load_dataset(
        ml_collections.ConfigDict(
            {"name": "mnist", "num_train": 60000, "num_test": args.num_test, "seed": 0}
        )
    )
    if args.workdir:
        try:
            trained = advjax_runs.load_trained(args.workdir, best=True)
        except (CheckpointError, ConfigError) as e:
            parser.error(f"--workdir: {e}")
        model_cfg = {k: v for k, v in trained.config.model.items() if v not in ("", None)}
        if model_cfg != {"name": "small_cnn"}:
            parser.error(f"--workdir: the run's model is {model_cfg}; only the default small_cnn")
        module, variables = trained.module, trained.variables
        model_note = f"small_cnn of {args.workdir} (best checkpoint, step {trained.step})"
    else:
        module, variables, _ = adversarially_trained("small_cnn", data, steps=args.train_steps)
        model_note = f"small_cnn, {args.train_steps} PGD-AT steps (bench/attacks.py)"
    net = torch_model("small_cnn", variables, "cpu")
    x, y = np.asarray(data.test_x[: args.num_test]), np.asarray(data.test_y[: args.num_test])
    with torch.no_grad():
        gap = float(
            np.abs(
                net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
                - np.asarray(module.apply(variables, jnp.asarray(x)))
            ).max()
        )
    assert gap < 1e-3, gap
    clean = float(np.mean(np.argmax(np.asarray(module.apply(variables, jnp.asarray(x))), 1) == y))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rj, after_j, t_j, c_j = run_advjax(module, variables, x, y, seed, components)
        rr, after_r, t_r = run_reference(net, x, y, seed, components)
        runs.append(
            {
                "seed": seed,
                "advjax": {
                    "robust_accuracy_after": after_j,
                    "time_s": t_j,
                    "compile_s": c_j,
                    "robust_accuracy": float(rj.mean()),
                    "black_box_gap": black_box_gap(after_j),
                },
                "reference": {
                    "robust_accuracy_after": after_r,
                    "time_s": t_r,
                    "robust_accuracy": float(rr.mean()),
                    "black_box_gap": black_box_gap(after_r),
                },
                "agreement": {
                    "same_outcome": float(np.mean(rj == rr)),
                    "robust_on_both": int(np.sum(rj & rr)),
                    "broken_only_by_advjax": int(np.sum(~rj & rr)),
                    "broken_only_by_reference": int(np.sum(rj & ~rr)),
                },
                "advjax_minus_reference_points": round(100 * float(rj.mean() - rr.mean()), 2),
            }
        )
        print(json.dumps(runs[-1]["agreement"]), flush=True)
    result = {
        "setup": {
            "model": f"{model_note}, weights copied to torch",
            "max_logit_gap": gap,
            "num_examples": args.num_test,
            "norm": "linf",
            "eps": EPS,
            "advjax_version": "ensemble, version='standard'",
            "components": list(components),
            "reference": f"pyautoattack {getattr(pyautoattack, '__version__', '0.2.0')} "
            "AutoAttack(version='standard'), components called in its order",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
            "jax": jax.__version__,
            "torch": torch.__version__,
        },
        "clean_accuracy": clean,
        "runs": runs,
        "mean_advjax_minus_reference_points": round(
            float(np.mean([r["advjax_minus_reference_points"] for r in runs])), 2
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
