"""Synthetic distributions with closed-form robustness theory.

* ``tsipras_toy``: Tsipras et al. 2019, "Robustness May Be at Odds with Accuracy",
  section 2.1. ``y`` uniform in {-1, +1}; ``x_1 = y`` with probability ``p`` else ``-y``;
  ``x_2 .. x_{d+1} ~ N(eta y, 1)``. Labels are stored as classes {0, 1} (class 1 = ``y = +1``).
* ``moayeri_regression``: advjax's reconstruction of the Gaussian regression model with
  disjoint core and spurious features that Moayeri et al. 2022 analyse (from the abstract
  and the method description, not the paper's section 3 equations; see
  `advjax.analysis.spurious.CoreSpuriousModel`); float targets, ``num_classes = 1``.
* ``synthetic``: dispatches on ``data.kind`` to one of the above.

Features are unbounded; ``DatasetInfo.bounds`` is a box wide enough never to bind, so
attacks act on the plain l_p ball.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from advjax.data.core import DataConfigError

# Wide enough that no sample or perturbation reaches it; finite so reports stay valid JSON.
UNBOUNDED = (-1.0e6, 1.0e6)


def sample_tsipras(
    key: jax.Array, num: int, *, dim: int, eta: float, p: float
) -> tuple[jax.Array, jax.Array]:
    """Draws ``num`` examples of the Tsipras et al. toy distribution.

    Args:
      key: PRNG key.
      num: number of examples.
      dim: number of weak features ``d`` (inputs have ``d + 1`` coordinates).
      eta: mean shift of the weak features.
      p: probability that the robust feature agrees with the label.

    Returns:
      ``(x [num, d + 1] float32, y [num] float32 in {-1, +1})``.
    """
    k_y, k_s, k_n = jax.random.split(key, 3)
    y = jax.random.rademacher(k_y, (num,), jnp.float32)
    agree = jax.random.bernoulli(k_s, p, (num,))
    x1 = jnp.where(agree, y, -y)
    weak = eta * y[:, None] + jax.random.normal(k_n, (num, dim), jnp.float32)
    return jnp.concatenate([x1[:, None], weak], axis=1), y


def sample_core_spurious(
    key: jax.Array,
    num: int,
    *,
    d_core: int,
    d_spurious: int,
    scale_core: float,
    scale_spurious: float,
    noise_core: float,
    noise_spurious: float,
    spurious_sign: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Draws ``num`` examples of the core/spurious Gaussian regression model.

    ``y ~ N(0, 1)``, ``x_c = scale_core (y + noise_core n)``,
    ``x_s = scale_spurious (spurious_sign y + noise_spurious n)`` (advjax's reconstruction
    of the setting of Moayeri et al. 2022).

    Returns:
      ``(x [num, d_core + d_spurious] float32 (core first), y [num] float32)``.
    """
    k_y, k_c, k_s = jax.random.split(key, 3)
    y = jax.random.normal(k_y, (num,), jnp.float32)
    xc = scale_core * (y[:, None] + noise_core * jax.random.normal(k_c, (num, d_core)))
    xs = scale_spurious * (
        spurious_sign * y[:, None] + noise_spurious * jax.random.normal(k_s, (num, d_spurious))
    )
    return jnp.concatenate([xc, xs], axis=1).astype(jnp.float32), y


def tsipras_params(data_config) -> dict:
    """``dim``, ``eta`` (default ``3 / sqrt(dim)`` when 0 or missing) and ``p`` of a config."""
    dim = int(data_config.get("dim", 1000))
    eta = float(data_config.get("eta", 0.0) or 0.0) or 3.0 / math.sqrt(dim)
    p = float(data_config.get("p", 0.95))
    if dim < 1 or not 0.0 < p < 1.0 or eta <= 0:
        raise DataConfigError(
            f"config keys 'data.dim'/'data.p'/'data.eta': need dim >= 1, 0 < p < 1, eta > 0; "
            f"got dim={dim}, p={p}, eta={eta}"
        )
    return {"dim": dim, "eta": eta, "p": p}


def moayeri_params(data_config) -> dict:
    """The `CoreSpuriousModel` fields of a config (training correlation: sign 1)."""
    params = {
        "d_core": int(data_config.get("d_core", 1)),
        "d_spurious": int(data_config.get("d_spurious", 1)),
        "scale_core": float(data_config.get("scale_core", 1.0)),
        "scale_spurious": float(data_config.get("scale_spurious", 1.0)),
        "noise_core": float(data_config.get("noise_core", 0.5)),
        "noise_spurious": float(data_config.get("noise_spurious", 1.0)),
    }
    if params["d_core"] < 1 or params["d_spurious"] < 1:
        raise DataConfigError(
            f"config keys 'data.d_core'/'data.d_spurious' must be >= 1; got "
            f"{params['d_core']}, {params['d_spurious']}"
        )
    return params


def _sizes(data_config, default_train: int, default_test: int) -> tuple[int, int, int]:
    num_train = int(data_config.get("num_train", 0) or 0) or default_train
    num_test = int(data_config.get("num_test", 0) or 0) or default_test
    return num_train, num_test, int(data_config.get("seed", 0))


def load_tsipras_toy(data_config):
    """The Tsipras toy distribution as a `Dataset` (``data.name = 'tsipras_toy'``).

    Config keys: ``dim`` (1000), ``eta`` (0 = ``3/sqrt(dim)``), ``p`` (0.95), ``num_train``
    (0 = 10,000), ``num_test`` (0 = 10,000), ``seed``. Inputs are vectors of length
    ``dim + 1``; labels are {0, 1} with class 1 for ``y = +1``.
    """
    from advjax.data import Dataset, DatasetInfo

    params = tsipras_params(data_config)
    num_train, num_test, seed = _sizes(data_config, 10_000, 10_000)
    key = jax.random.PRNGKey(seed)
    xtr, ytr = sample_tsipras(jax.random.fold_in(key, 0), num_train, **params)
    xte, yte = sample_tsipras(jax.random.fold_in(key, 1), num_test, **params)
    to_class = lambda y: np.asarray((y > 0).astype(jnp.int32))
    return Dataset(
        info=DatasetInfo("tsipras_toy", (params["dim"] + 1,), 2, UNBOUNDED),
        train_x=np.asarray(xtr),
        train_y=to_class(ytr),
        test_x=np.asarray(xte),
        test_y=to_class(yte),
    )


def load_moayeri_regression(data_config):
    """The core/spurious regression model as a `Dataset` (``'moayeri_regression'``).

    Config keys: ``d_core``, ``d_spurious``, ``scale_core``, ``scale_spurious``,
    ``noise_core``, ``noise_spurious`` (see `sample_core_spurious`), ``test_spurious_sign``
    (1 = same correlation as training, 0 = removed, -1 = flipped), ``num_train``
    (0 = 10,000), ``num_test`` (0 = 10,000), ``seed``. Targets are float32 and
    ``num_classes = 1`` (one regression output).
    """
    from advjax.data import Dataset, DatasetInfo

    params = moayeri_params(data_config)
    test_sign = float(data_config.get("test_spurious_sign", 1.0))
    num_train, num_test, seed = _sizes(data_config, 10_000, 10_000)
    key = jax.random.PRNGKey(seed)
    xtr, ytr = sample_core_spurious(jax.random.fold_in(key, 0), num_train, **params)
    xte, yte = sample_core_spurious(
        jax.random.fold_in(key, 1), num_test, spurious_sign=test_sign, **params
    )
    dim = params["d_core"] + params["d_spurious"]
    return Dataset(
        info=DatasetInfo("moayeri_regression", (dim,), 1, UNBOUNDED),
        train_x=np.asarray(xtr),
        train_y=np.asarray(ytr, np.float32),
        test_x=np.asarray(xte),
        test_y=np.asarray(yte, np.float32),
    )


def load_synthetic(data_config):
    """``data.name = 'synthetic'``: ``data.kind`` selects ``tsipras_toy`` or
    ``moayeri_regression``."""
    from advjax.registry import one_of

    kind = data_config.get("kind", "tsipras_toy")
    one_of(kind, ("tsipras_toy", "moayeri_regression"), key="data.kind")
    if kind == "tsipras_toy":
        return load_tsipras_toy(data_config)
    return load_moayeri_regression(data_config)
