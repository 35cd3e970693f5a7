"""PyTorch checkpoints into flax: logit parity for every supported layout, and errors.

Each parity test builds the PyTorch reference network (`tests/torch_models.py`, written
from the published definitions) with random weights and random BatchNorm running
statistics, puts it in eval mode, converts its state dict and asks for the same logits
(max abs difference 1e-4) on random inputs. WRN-34-10 and WRN-70-16 run through the same
code at reduced width/depth; their full-size key sets and shapes are checked on torch's
meta device, which allocates no weights.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_models as tm  # noqa: E402

from advjax.models import torch_import  # noqa: E402
from advjax.models.torch_import import (  # noqa: E402
    CheckpointError,
    CheckpointMismatchError,
    check_state_dict,
    convert_state_dict,
    load_torch_checkpoint,
)

TOLERANCE = 1e-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _inputs(n: int, shape=(32, 32, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()


def _flax_logits(module, variables, x: np.ndarray) -> np.ndarray:
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
    return np.asarray(apply(variables, jnp.asarray(x)))


def _assert_parity(torch_model, state_dict, model_name, *, shape=(32, 32, 3), n=3, **fields):
    x = _inputs(n, shape)
    expected = _torch_logits(torch_model, x)
    module, variables = torch_import._convert(state_dict, model_name, shape, fields)
    got = _flax_logits(module, variables, x)
    assert got.shape == expected.shape
    # Logits of order one or more, so 1e-4 is a meaningful bound.
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    return module, variables


# --- Logit parity ----------------------------------------------------------------------


def test_preact_resnet18_v2_with_final_bn_into_advjax_preact_resnet18():
    # RobustBench PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True) with
    # CIFAR-10 normalisation (Rice et al. 2020 l_2), at full size.
    net = tm.randomise(tm.PreActResNet(bn_before_fc=True, out_shortcut=True), seed=1)
    ref = tm.Normalised(net, tm.CIFAR10_MEAN, tm.CIFAR10_STD)
    _assert_parity(
        ref, net.state_dict(), "preact_resnet18", mean=tm.CIFAR10_MEAN, std=tm.CIFAR10_STD
    )


@pytest.mark.parametrize("out_shortcut,bn_before_fc", [(False, False), (True, True)])
def test_robustbench_preact_resnet_variants(out_shortcut, bn_before_fc):
    # (False, False): Wong et al. 2020 / Andriushchenko & Flammarion 2020 in RobustBench.
    widths = (16, 32, 32, 64)
    net = tm.PreActResNet(widths, bn_before_fc=bn_before_fc, out_shortcut=out_shortcut)
    net = tm.randomise(net, seed=2)
    ref = tm.Normalised(net, tm.CIFAR10_MEAN, tm.CIFAR10_STD)
    _assert_parity(
        ref,
        net.state_dict(),
        "rb_preact_resnet",
        widths=widths,
        out_shortcut=out_shortcut,
        bn_before_fc=bn_before_fc,
        mean=tm.CIFAR10_MEAN,
        std=tm.CIFAR10_STD,
    )


def test_wide_resnet_28_10_full_size_with_unused_sub_block():
    # Carmon et al. 2019 in RobustBench: WideResNet(28, 10, sub_block1=True), no
    # normalisation; the checkpoint's unused sub_block1 is dropped.
    net = tm.randomise(tm.WideResNet(depth=28, widen_factor=10, sub_block1=True), seed=3)
    assert any(k.startswith("sub_block1.") for k in net.state_dict())
    _assert_parity(net, net.state_dict(), "wide_resnet", n=2, depth=28, width=10)


def test_wide_resnet_34_with_normalisation_reduced_width():
    # Rice et al. 2020's WideResNet-34 (normalised inputs), at width 2.
    net = tm.randomise(tm.WideResNet(depth=34, widen_factor=2), seed=4)
    ref = tm.Normalised(net, tm.CIFAR10_MEAN, tm.CIFAR10_STD)
    _assert_parity(
        ref,
        net.state_dict(),
        "wide_resnet",
        depth=34,
        width=2,
        mean=tm.CIFAR10_MEAN,
        std=tm.CIFAR10_STD,
    )


@pytest.mark.parametrize(
    "activation,torch_activation,depth,width",
    [("swish", torch.nn.SiLU, 16, 2), ("relu", torch.nn.ReLU, 10, 4)],
)
def test_dm_wide_resnet(activation, torch_activation, depth, width):
    # Gowal et al. 2020's WRN-70-16 (Swish) and the ReLU variants, at reduced size.
    net = tm.DMWideResNet(depth=depth, width=width, activation=torch_activation)
    net = tm.randomise(net, seed=5)
    module, _ = _assert_parity(
        net, net.state_dict(), "dm_wide_resnet", depth=depth, width=width, activation=activation
    )
    assert tuple(module.mean) == tm.CIFAR10_MEAN  # The reference's default normalisation.


def test_resnet50_full_size_imagenet_normalisation():
    net = tm.randomise(tm.ResNet50(), seed=6)
    ref = tm.Normalised(net, IMAGENET_MEAN, IMAGENET_STD)
    _assert_parity(ref, net.state_dict(), "resnet50", shape=(64, 64, 3), n=2)


@pytest.mark.parametrize(
    "model_name,fields,make",
    [
        ("wide_resnet", {"depth": 34, "width": 10}, lambda: tm.WideResNet(34, 10, sub_block1=True)),
        (
            "dm_wide_resnet",
            {"depth": 70, "width": 16},
            lambda: tm.DMWideResNet(70, 16, activation=torch.nn.SiLU),
        ),
        ("dm_wide_resnet", {"depth": 28, "width": 10}, lambda: tm.DMWideResNet(28, 10)),
        ("dm_wide_resnet", {"depth": 34, "width": 10}, lambda: tm.DMWideResNet(34, 10)),
    ],
)
def test_full_size_key_sets_and_shapes(model_name, fields, make):
    with torch.device("meta"):
        net = make()
    state_dict = net.state_dict()
    module, expected = check_state_dict(state_dict, model_name, **fields)
    used = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    used = {k for k in used if not k.startswith("sub_block1.")}
    assert set(expected) == used
    assert module.num_classes == 10
    params = sum(int(np.prod(s)) for _, (c, _, s, _) in expected.items() if c == "params")
    torch_params = sum(
        p.numel() for n, p in net.named_parameters() if not n.startswith("sub_block1.")
    )
    assert params == torch_params


# --- Files, wrappers, safety ------------------------------------------------------------


def _small_resnet50():
    return tm.randomise(tm.ResNet50(stage_sizes=(1, 2, 1, 1), width=8, num_classes=7), seed=7)


def test_load_wrapped_data_parallel_checkpoint(tmp_path):
    net = tm.randomise(tm.PreActResNet((8, 8, 16, 16)), seed=8)
    wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": wrapped}, path)
    module, variables = load_torch_checkpoint(path, "rb_preact_resnet", widths=(8, 8, 16, 16))
    x = _inputs(2)
    np.testing.assert_allclose(
        _flax_logits(module, variables, x), _torch_logits(net, x), rtol=0, atol=TOLERANCE
    )


def test_load_robustness_library_checkpoint_takes_its_normaliser(tmp_path):
    # The `robustness` library saves {'model': {'module.model.*', 'module.attacker.model.*',
    # 'module.normalizer.new_mean' ...}}; its normaliser becomes the model's mean/std.
    net = _small_resnet50()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    entries = {}
    for prefix in ("module.", "module.attacker."):
        entries[f"{prefix}normalizer.new_mean"] = torch.tensor(mean).view(3, 1, 1)
        entries[f"{prefix}normalizer.new_std"] = torch.tensor(std).view(3, 1, 1)
        entries.update({f"{prefix}model.{k}": v for k, v in net.state_dict().items()})
    path = tmp_path / "robustness.pt"
    torch.save({"model": entries, "epoch": 90}, path)
    module, variables = load_torch_checkpoint(path, "resnet50", stage_sizes=(1, 2, 1, 1), width=8)
    assert module.num_classes == 7
    np.testing.assert_allclose(module.mean, mean, rtol=1e-6)
    x = _inputs(2, (48, 48, 3))
    ref = tm.Normalised(net, mean, std)
    np.testing.assert_allclose(
        _flax_logits(module, variables, x), _torch_logits(ref, x), rtol=0, atol=TOLERANCE
    )


def test_safetensors_file_gives_the_same_variables(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    net = _small_resnet50()
    arrays = {k: v.numpy() for k, v in net.state_dict().items()}
    path = tmp_path / "weights.safetensors"
    safetensors_numpy.save_file(arrays, str(path))
    _, from_file = load_torch_checkpoint(path, "resnet50", stage_sizes=(1, 2, 1, 1), width=8)
    direct = convert_state_dict(net.state_dict(), "resnet50", stage_sizes=(1, 2, 1, 1), width=8)
    jax.tree.map(np.testing.assert_array_equal, from_file, direct)


class _Payload:
    """Unpickling this object would create a directory: a stand-in for arbitrary code."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_with_code_running_payload_is_refused(tmp_path):
    net = _small_resnet50()
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": net.state_dict(), "extra": _Payload(str(marker))}, path)
    # The payload is live: a plain unpickle runs it.
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(CheckpointError, match="refused"):
        load_torch_checkpoint(path, "resnet50", stage_sizes=(1, 2, 1, 1), width=8)
    assert not marker.exists()


# --- Mismatch errors --------------------------------------------------------------------


def _small_state_dict():
    return dict(_small_resnet50().state_dict())


FIELDS = {"stage_sizes": (1, 2, 1, 1), "width": 8}


def test_missing_key_is_named():
    state_dict = _small_state_dict()
    del state_dict["layer2.1.bn2.running_var"]
    with pytest.raises(
        CheckpointMismatchError, match=r"missing keys \(1\): layer2\.1\.bn2\.running_var"
    ):
        convert_state_dict(state_dict, "resnet50", **FIELDS)


def test_extra_key_is_named():
    state_dict = _small_state_dict()
    state_dict["layer5.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected keys \(1\): layer5\.0\.conv1\.weight"
    ):
        convert_state_dict(state_dict, "resnet50", **FIELDS)


def test_wrong_shape_names_expected_and_got():
    state_dict = _small_state_dict()
    state_dict["layer3.0.conv2.weight"] = torch.zeros(32, 32, 5, 5)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"layer3\.0\.conv2\.weight: expected \(32, 32, 3, 3\), got \(32, 32, 5, 5\)",
    ):
        convert_state_dict(state_dict, "resnet50", **FIELDS)


def test_wrong_architecture_fields_are_reported_before_any_conversion():
    # A WRN-28-10 checkpoint read as WRN-34-10: the missing blocks are listed.
    with torch.device("meta"):
        net = tm.WideResNet(28, 10)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*block1\.layer\.4\.bn1"):
        check_state_dict(net.state_dict(), "wide_resnet", depth=34, width=10)


def test_unknown_model_lists_the_converters():
    with pytest.raises(CheckpointError, match="converters exist for .*dm_wide_resnet"):
        convert_state_dict({}, "madry_cnn")


@pytest.mark.slow
def test_advjax_models_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import advjax.models.torch_import, advjax.models.robustbench, advjax.models.resnet50\n"
        "from advjax.models import MODELS\n"
        "MODELS.get('dm_wide_resnet'); MODELS.get('resnet50'); MODELS.get('rb_preact_resnet')\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_robustbench_persistent_normalisation_buffers_set_mean_and_std():
    # RobustBench models such as Rice2020OverfittingNet register mu/sigma as buffers, so
    # their state_dict() carries them next to the weights.
    net = tm.randomise(tm.WideResNet(depth=10, widen_factor=2), seed=9)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    state_dict = {
        **net.state_dict(),
        "mu": torch.tensor(mean).view(1, 3, 1, 1),
        "sigma": torch.tensor(std).view(1, 3, 1, 1),
    }
    module, _ = _assert_parity(
        tm.Normalised(net, mean, std), state_dict, "wide_resnet", depth=10, width=2
    )
    np.testing.assert_allclose(module.std, std, rtol=1e-6)
    with pytest.raises(CheckpointMismatchError, match="differs from the checkpoint's"):
        convert_state_dict(state_dict, "wide_resnet", depth=10, width=2, mean=(0.0, 0.0, 0.0))


def test_from_model_config_reads_the_config_fields(tmp_path):
    import ml_collections

    from advjax.data import DatasetInfo

    net = tm.randomise(tm.DMWideResNet(depth=10, width=1, activation=torch.nn.SiLU), seed=10)
    path = tmp_path / "dm.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    config = ml_collections.ConfigDict(
        dict(name="dm_wide_resnet", depth=10, width=1, torch_checkpoint=str(path))
    )
    module, variables = torch_import.from_model_config(
        config, DatasetInfo("cifar10", (32, 32, 3), 10)
    )
    assert (module.activation, module.depth, module.num_classes) == ("swish", 10, 10)
    x = _inputs(2)
    np.testing.assert_allclose(
        _flax_logits(module, variables, x), _torch_logits(net, x), rtol=0, atol=TOLERANCE
    )


# --- The launcher: --config.model.torch_checkpoint with --mode eval -----------------------

_LAUNCH_CONFIG = """
import sys
sys.path.insert(0, {root!r})
from configs import base


def get_config(arg=None):
    c = base.get_base_config()
    c.data.update(dict(name="spurious", base="mnist", classes=(3, 8), num_train=200,
                       num_test=64, seed=0))
    c.model = base.ml_collections.ConfigDict(
        dict(name="rb_preact_resnet", widths=(8, 8, 16, 16), torch_checkpoint=""))
    c.eval.batch_size = 32
    c.eval.num_examples = 64
    c.eval.sanity_checks = False
    c.eval.attacks = base.ml_collections.ConfigDict(
        dict(fgsm=dict(name="fgsm", eps=base.eps_ref(c))))
    c.train.progress = False
    return c
"""


def _launch_config(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / "imported.py"
    path.write_text(_LAUNCH_CONFIG.format(root=root))
    return str(path)


def test_launcher_evaluates_a_torch_checkpoint_with_torchs_clean_accuracy(tmp_path, capsys):
    import json

    import ml_collections

    from advjax.data import load_dataset
    from launch.main import main

    net = tm.randomise(tm.PreActResNet((8, 8, 16, 16), num_classes=2), seed=11)
    ckpt = tmp_path / "preact.pt"
    torch.save(net.state_dict(), ckpt)
    config, workdir = _launch_config(tmp_path), str(tmp_path / "eval")
    argv = ["--config", config, "--workdir", workdir, "--mode", "eval"]
    assert main([*argv, f"--config.model.torch_checkpoint={ckpt}"]) == 0
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)["eval"]
    data = load_dataset(
        ml_collections.ConfigDict(
            dict(name="spurious", base="mnist", classes=(3, 8), num_train=200, num_test=64)
        )
    )
    x, y = np.asarray(data.test_x[:64]), np.asarray(data.test_y[:64])
    torch_accuracy = float(np.mean(np.argmax(_torch_logits(net, x), axis=1) == y))
    assert report["num_examples"] == 64
    assert report["clean_accuracy"] == torch_accuracy
    assert report["torch_checkpoint"] == str(ckpt)

    # A missing file and a state dict of another architecture: one line, exit code 2.
    capsys.readouterr()
    assert main([*argv, f"--config.model.torch_checkpoint={tmp_path / 'none.pt'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advjax: error:") and "none.pt" in err and "\n" not in err
    other = tmp_path / "other.pt"
    torch.save(
        tm.randomise(tm.PreActResNet((8, 8, 16, 32), num_classes=2), seed=12).state_dict(), other
    )
    assert main([*argv, f"--config.model.torch_checkpoint={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "wrong shape" in err and "\n" not in err
