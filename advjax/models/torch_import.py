"""PyTorch checkpoints into advjax's flax models: RobustBench's CIFAR networks and
torchvision's ResNet-50 (the ImageNet models of the `robustness` library).

Supported layouts, by `advjax.models.MODELS` name:

* ``preact_resnet18``: RobustBench ``PreActResNet(PreActBlockV2, bn_before_fc=True)``
  (Rice et al. 2020 l_2, Kireev et al. 2021).
* ``rb_preact_resnet``: RobustBench ``PreActResNet`` with either switch (Wong et al.
  2020, Andriushchenko & Flammarion 2020).
* ``wide_resnet``: RobustBench ``WideResNet`` (Carmon et al. 2019, Zhang et al. 2019,
  Rice et al. 2020); the unused ``sub_block1`` of some checkpoints is dropped.
* ``dm_wide_resnet``: RobustBench ``DMWideResNet`` (Gowal et al. 2020, Rebuffi et al.
  2021), ``activation="swish"`` or ``"relu"``.
* ``resnet50``: torchvision's ``resnet50``, the `robustness` library's ResNet-50.

Input normalisation is a model field (``mean``/``std``) because RobustBench keeps it
outside most state dicts; normaliser buffers stored in a checkpoint (the `robustness`
library's, RobustBench's persistent ``mu``/``sigma``) set it. The
state dict is checked against the flax variables tree (built abstractly, no compute)
before anything is converted, and a mismatch is one `CheckpointMismatchError` listing the
missing keys, the extra keys and the keys of the wrong shape (expected vs got).

Reading never runs code from the file: ``.pt``/``.pth`` files go through
``torch.load(weights_only=True)`` and ``.safetensors`` files through safetensors' numpy
reader. Torch is imported only inside `read_checkpoint`, so advjax imports without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "check_state_dict",
    "convert_state_dict",
    "extract_state_dict",
    "from_model_config",
    "load_torch_checkpoint",
    "read_checkpoint",
]

# Wrapper keys that training scripts put around a state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")
# The final linear layer, from which ``num_classes`` is read when not given.
_FINAL_LAYER = {
    "preact_resnet18": "linear",
    "rb_preact_resnet": "linear",
    "wide_resnet": "fc",
    "dm_wide_resnet": "logits",
    "resnet50": "fc",
}
# Entries a layout's checkpoints carry that the forward pass never uses.
_UNUSED_PREFIXES = {"wide_resnet": ("sub_block1.",)}
_MAX_LISTED = 12


class CheckpointError(ValueError):
    """A checkpoint file that advjax refuses or cannot read."""


class CheckpointMismatchError(CheckpointError):
    """A state dict that does not fit the requested architecture."""


# --------------------------------------------------------------------------------------
# Reading files.


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored at ``path``, read without running code from the file.

    ``.safetensors`` files are read as numpy arrays; anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)``, which unpickles only
    tensors and plain containers and refuses any other object.

    Raises:
      CheckpointError: the file is missing, or holds objects that a weights-only load
        refuses (with what to do about it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as err:
            raise CheckpointError(
                f"checkpoint {path!r}: reading .safetensors needs `pip install safetensors`"
            ) from err
        return load_file(path)
    try:
        import torch
    except ImportError as err:
        raise CheckpointError(
            f"checkpoint {path!r}: reading PyTorch files needs torch "
            "(`pip install -e '.[dev]'` or `pip install torch`)"
        ) from err
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path!r}: refused, it holds objects other than tensors and plain "
            f"containers, and loading it would run code from the file ({first_line}). "
            "In an environment you trust, re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pt')"
        ) from err


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def extract_state_dict(obj: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The model's state dict inside a checkpoint, and any input normaliser it carries.

    Unwraps ``{'state_dict': ...}``, ``{'model_state_dict': ...}``, ``{'model': ...}``
    (and ``net``/``state``), strips the ``module.`` prefix of ``DataParallel``, reads
    the `robustness` library's layout (``model.*`` weights, ``attacker.*`` duplicates,
    ``normalizer.new_mean``/``new_std`` buffers), and takes RobustBench's persistent
    normalisation buffers (top-level ``mu``/``sigma``, or ``mean``/``std``) out of the
    weights. A plain state dict comes back unchanged.

    Returns:
      (state_dict, normaliser) where normaliser is ``{}`` or ``{"mean": [C], "std": [C]}``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    while not any(_is_array(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                "checkpoint holds no tensors at its top level and none of the wrapper keys "
                f"{list(_WRAPPER_KEYS)}; top-level keys: {sorted(obj)[:_MAX_LISTED]}"
            )
        obj = inner
    state = {str(k): v for k, v in obj.items() if _is_array(v)}
    for prefix in ("module.", "model.module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    normaliser: dict[str, np.ndarray] = {}
    if any(k.startswith("model.") for k in state) and any(
        k.startswith(("attacker.", "normalizer.")) for k in state
    ):
        for name in ("mean", "std"):
            key = f"normalizer.new_{name}"
            if key in state:
                normaliser[name] = _to_numpy(state[key]).reshape(-1)
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    for mean_key, std_key in (("mu", "sigma"), ("mean", "std")):
        if mean_key in state and std_key in state:
            normaliser = {
                "mean": _to_numpy(state.pop(mean_key)).reshape(-1),
                "std": _to_numpy(state.pop(std_key)).reshape(-1),
            }
    return state, normaliser


def _with_normaliser(fields: dict[str, Any], normaliser: dict[str, np.ndarray]) -> dict:
    """``fields`` with the checkpoint's mean/std; an explicit, different one is an error."""
    if not normaliser:
        return fields
    stored = {k: tuple(float(x) for x in v) for k, v in normaliser.items()}
    for name, value in stored.items():
        given = fields.get(name)
        if given is not None and (
            len(given) != len(value) or not np.allclose(given, value, rtol=0, atol=1e-6)
        ):
            raise CheckpointMismatchError(
                f"model field {name}={tuple(given)} differs from the checkpoint's input "
                f"normalisation {name}={value}; leave {name} unset to use the checkpoint's"
            )
    return {**fields, **stored}


# --------------------------------------------------------------------------------------
# The key map: flax variables tree <-> PyTorch state-dict keys.


def _suffix(name: str) -> int:
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else -1


def _kind(node: Any) -> str:
    if not isinstance(node, Mapping):
        return "leaf"
    if "kernel" in node and not isinstance(node["kernel"], Mapping):
        return "conv" if len(node["kernel"].shape) == 4 else "dense"
    if "scale" in node and not isinstance(node["scale"], Mapping):
        return "batch_norm"
    return "module"


def _of_kind(tree: Mapping, kind: str) -> list[str]:
    """Children of ``tree`` of one kind, in creation order (flax's ``_N`` suffixes)."""
    return sorted((n for n, v in tree.items() if _kind(v) == kind), key=_suffix)


def _auto_named_block(tree: Mapping, shortcut: str) -> dict[str, str]:
    # advjax's pre-activation blocks create [shortcut conv,] conv1, conv2 and bn1, bn2.
    convs = _of_kind(tree, "conv")
    torch_convs = [shortcut, "conv1", "conv2"] if len(convs) == 3 else ["conv1", "conv2"]
    names = dict(zip(convs, torch_convs, strict=True))
    names.update(zip(_of_kind(tree, "batch_norm"), ["bn1", "bn2"], strict=True))
    return names


def _names_preact_resnet18(module) -> Callable[[tuple[str, ...], Mapping], dict[str, str]]:
    def names(path, tree):
        if path:
            return _auto_named_block(tree, "shortcut.0")
        blocks = sorted((n for n in tree if _kind(tree[n]) == "module"), key=_suffix)
        out = {n: f"layer{i // 2 + 1}.{i % 2}" for i, n in enumerate(blocks)}
        out.update(zip(_of_kind(tree, "conv"), ["conv1"], strict=True))
        out.update(zip(_of_kind(tree, "batch_norm"), ["bn"], strict=True))
        out.update(zip(_of_kind(tree, "dense"), ["linear"], strict=True))
        return out

    return names


def _names_wide_resnet(module) -> Callable[[tuple[str, ...], Mapping], dict[str, str]]:
    per_group = (module.depth - 4) // 6

    def names(path, tree):
        if path:
            return _auto_named_block(tree, "convShortcut")
        blocks = sorted((n for n in tree if _kind(tree[n]) == "module"), key=_suffix)
        out = {n: f"block{i // per_group + 1}.layer.{i % per_group}" for i, n in enumerate(blocks)}
        out.update(zip(_of_kind(tree, "conv"), ["conv1"], strict=True))
        out.update(zip(_of_kind(tree, "batch_norm"), ["bn1"], strict=True))
        out.update(zip(_of_kind(tree, "dense"), ["fc"], strict=True))
        return out

    return names


def _renamer(rules: list[tuple[str, str]]):
    """Names given by regex rewrites of the flax names (modules named after torch's)."""

    def names(path, tree):
        out = {}
        for name in tree:
            torch_name = name
            for pattern, replacement in rules:
                torch_name = re.sub(pattern, replacement, torch_name)
            out[name] = torch_name
        return out

    return lambda module: names


_NAMES = {
    "preact_resnet18": _names_preact_resnet18,
    "wide_resnet": _names_wide_resnet,
    "rb_preact_resnet": _renamer(
        [(r"^layer(\d+)_(\d+)$", r"layer\1.\2"), ("^shortcut$", "shortcut.0")]
    ),
    "dm_wide_resnet": _renamer([(r"^group(\d+)_block(\d+)$", r"layer.\1.block.\2")]),
    "resnet50": _renamer(
        [
            (r"^layer(\d+)_(\d+)$", r"layer\1.\2"),
            ("^downsample_conv$", "downsample.0"),
            ("^downsample_bn$", "downsample.1"),
        ]
    ),
}

# (collection, flax leaf, torch suffix, how a torch array becomes the flax leaf)
_LEAVES = {
    "conv": [
        ("params", "kernel", "weight", lambda w: w.transpose(2, 3, 1, 0)),
        ("params", "bias", "bias", None),
    ],
    "dense": [("params", "kernel", "weight", lambda w: w.T), ("params", "bias", "bias", None)],
    "batch_norm": [
        ("params", "scale", "weight", None),
        ("params", "bias", "bias", None),
        ("batch_stats", "mean", "running_mean", None),
        ("batch_stats", "var", "running_var", None),
    ],
}


def _torch_shape(flax_shape: tuple[int, ...], transform) -> tuple[int, ...]:
    if transform is None:
        return tuple(flax_shape)
    if len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return tuple(reversed(flax_shape))


def _expected_keys(model_name: str, module, abstract: Mapping) -> tuple[dict[str, tuple], set[str]]:
    """``{torch key: (collection, flax path, torch shape, transform)}`` and the torch
    keys that may be present without being used (BatchNorm's ``num_batches_tracked``)."""
    names_for = _NAMES[model_name](module)
    params = abstract["params"]
    stats = abstract.get("batch_stats", {})
    expected: dict[str, tuple] = {}
    optional: set[str] = set()

    def walk(tree: Mapping, path: tuple[str, ...], torch_prefix: str):
        names = names_for(path, tree)
        for child, node in tree.items():
            kind = _kind(node)
            prefix = torch_prefix + names[child]
            if kind == "module":
                walk(node, (*path, child), prefix + ".")
                continue
            if kind == "leaf":
                raise CheckpointMismatchError(
                    f"model {model_name!r}: no torch name for the flax parameter "
                    f"{'/'.join((*path, child))}"
                )
            for collection, leaf, torch_leaf, transform in _LEAVES[kind]:
                source = params if collection == "params" else stats
                node_here = source
                for part in (*path, child):
                    node_here = node_here[part]
                if leaf in node_here:
                    shape = _torch_shape(node_here[leaf].shape, transform)
                    expected[f"{prefix}.{torch_leaf}"] = (
                        collection,
                        (*path, child, leaf),
                        shape,
                        transform,
                    )
            if kind == "batch_norm":
                optional.add(f"{prefix}.num_batches_tracked")

    walk(params, (), "")
    return expected, optional


def _build_module(model_name: str, fields: dict[str, Any]):
    from advjax.models import MODELS

    if model_name not in _NAMES:
        raise CheckpointError(
            f"model {model_name!r} has no PyTorch converter; converters exist for "
            f"{', '.join(sorted(_NAMES))}"
        )
    cls = MODELS.get(model_name, key="model.name")
    try:
        return cls(**fields)
    except TypeError as err:
        raise CheckpointError(f"model {model_name!r}: {err}") from err


def _abstract_variables(module, input_shape: tuple[int, ...]) -> dict:
    dummy = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jax.eval_shape(
        lambda x: module.init({"params": jax.random.key(0)}, x, train=False), dummy
    )


def _with_num_classes(model_name: str, state_dict: Mapping, fields: dict) -> dict:
    if "num_classes" in fields:
        return fields
    key = f"{_FINAL_LAYER[model_name]}.weight"
    if key not in state_dict:
        raise CheckpointMismatchError(
            f"model {model_name!r}: the state dict lacks {key!r} (the final linear layer); "
            "cannot infer num_classes"
        )
    return {**fields, "num_classes": int(state_dict[key].shape[0])}


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_state_dict(
    state_dict: Mapping[str, Any],
    model_name: str,
    *,
    input_shape: tuple[int, ...] = (32, 32, 3),
    **fields: Any,
):
    """Checks that a plain ``state_dict`` fits ``model_name`` with ``fields``; no compute.

    Only the entries' ``shape`` is read, so a model built on torch's ``meta`` device
    checks without allocating its weights.

    Returns:
      (module, expected) where ``expected`` maps each used torch key to
      (collection, flax path, torch shape, transform).

    Raises:
      CheckpointMismatchError: naming the missing keys, the extra keys and each key of
        the wrong shape (expected vs got).
    """
    if model_name not in _NAMES:
        _build_module(model_name, {})  # Raises the error that lists the converters.
    fields = _with_num_classes(model_name, state_dict, dict(fields))
    module = _build_module(model_name, fields)
    expected, optional = _expected_keys(
        model_name, module, _abstract_variables(module, input_shape)
    )
    unused = _UNUSED_PREFIXES.get(model_name, ())
    present = {k for k in state_dict if not k.startswith(unused)}
    missing = expected.keys() - present
    extra = present - expected.keys() - optional
    wrong = {
        k: (expected[k][2], tuple(state_dict[k].shape))
        for k in expected.keys() & present
        if tuple(state_dict[k].shape) != expected[k][2]
    }
    if missing or extra or wrong:
        setting = ", ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
        lines = [f"state dict does not fit model {model_name!r} ({setting}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listed(missing)}")
        if extra:
            lines.append(f"  unexpected keys ({len(extra)}): {_listed(extra)}")
        for key in sorted(wrong)[:_MAX_LISTED]:
            want, got = wrong[key]
            lines.append(f"  wrong shape for {key}: expected {want}, got {got}")
        if len(wrong) > _MAX_LISTED:
            lines.append(f"  ... and {len(wrong) - _MAX_LISTED} more keys of the wrong shape")
        raise CheckpointMismatchError("\n".join(lines))
    return module, expected


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # A torch tensor; .float() also covers bfloat16.
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _convert(checkpoint: Mapping[str, Any], model_name: str, input_shape, fields):
    if model_name not in _NAMES:
        _build_module(model_name, {})  # Raises the error that lists the converters.
    state_dict, normaliser = extract_state_dict(checkpoint)
    fields = _with_normaliser(dict(fields), normaliser)
    module, expected = check_state_dict(state_dict, model_name, input_shape=input_shape, **fields)
    variables: dict[str, dict] = {}
    for key, (collection, path, _, transform) in expected.items():
        array = _to_numpy(state_dict[key]).astype(np.float32)
        if transform is not None:
            array = transform(array)
        node = variables.setdefault(collection, {})
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(np.ascontiguousarray(array))
    return module, variables


def convert_state_dict(
    state_dict: Mapping[str, Any],
    model_name: str,
    *,
    input_shape: tuple[int, ...] = (32, 32, 3),
    **fields: Any,
) -> dict:
    """Flax variables (``params``, ``batch_stats``) of ``model_name`` from a state dict.

    Args:
      state_dict: PyTorch ``state_dict()`` of the architecture (torch tensors or numpy
        arrays), plain or in one of the wrappers that `extract_state_dict` removes; a
        normaliser it carries sets ``mean``/``std``.
      model_name: an `advjax.models.MODELS` name with a converter (module docstring).
      input_shape: one input (H, W, C), used only to trace the variables' shapes.
      **fields: the flax module's fields (``depth``, ``width``, ``activation``,
        ``mean``, ``std`` ...); ``num_classes`` defaults to the final layer's size.

    Returns:
      Variables for ``module.apply(variables, x, train=False)`` with x NHWC in [0, 1].

    Raises:
      CheckpointMismatchError: the state dict does not fit, before any conversion.
    """
    return _convert(state_dict, model_name, input_shape, fields)[1]


def load_torch_checkpoint(
    path: str | os.PathLike,
    model_name: str,
    *,
    input_shape: tuple[int, ...] = (32, 32, 3),
    **fields: Any,
):
    """The flax module and variables of a PyTorch checkpoint file.

    Reads ``path`` safely (`read_checkpoint`), unwraps it (`extract_state_dict`), takes
    ``mean``/``std`` from a normaliser stored in the checkpoint (`robustness` library,
    RobustBench's ``mu``/``sigma`` buffers), and converts it (`convert_state_dict`).

    Returns:
      (module, variables): ``module.apply(variables, x, train=False)`` gives the logits
      of the PyTorch model in eval mode on NHWC inputs in [0, 1].
    """
    return _convert(read_checkpoint(path), model_name, input_shape, fields)


def from_model_config(model_config, info):
    """(module, variables) for a config naming ``model.torch_checkpoint``.

    Every field of ``model_config`` except ``name`` and ``torch_checkpoint`` is a module
    field; ``num_classes`` and the traced input shape come from the dataset ``info``.
    """
    from advjax.models import model_kwargs

    fields = model_kwargs(model_config)
    path = fields.pop("torch_checkpoint")
    fields.setdefault("num_classes", info.num_classes)
    return load_torch_checkpoint(
        path, model_config.name, input_shape=tuple(info.input_shape), **fields
    )
