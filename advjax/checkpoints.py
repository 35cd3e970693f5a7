"""Orbax checkpoints of a training run: save, restore, resume, keep last K and best.

``workdir/checkpoints/<step>`` holds the last ``keep`` checkpoints and
``workdir/checkpoints/best/<step>`` the one with the best validation metric. Saves are
asynchronous and atomic (orbax writes to a temporary folder and renames it), so a run
killed mid-save leaves the previous checkpoint intact. Restoring always uses a target
tree; a checkpoint that does not fit it is reported as such, not as an orbax traceback.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or belongs to a different model or config."""


def _leaf_shapes(tree) -> dict[str, tuple]:
    """Leaf path -> shape, with paths normalised ("opt_state/0/mu/Conv_0/bias") so that
    orbax's metadata tree (dicts and lists) compares equal to the live pytree
    (dataclasses and named tuples)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    out = {}
    for path, leaf in flat:
        if leaf is None:
            continue
        name = "/".join(re.findall(r"[A-Za-z0-9_]+", jax.tree_util.keystr(path)))
        out[name] = tuple(np.shape(leaf))
    return out


class Checkpointer:
    """Last-K plus best checkpoints of one run.

    Args:
      directory: ``workdir/checkpoints``.
      keep: how many of the most recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = dict(create=True, cleanup_tmp_directories=True)

        def manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
            # Handlers named up front so that metadata (shapes) can be read before restoring.
            return ocp.CheckpointManager(
                path,
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **options),
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )

        self._last = manager(self.directory, keep)
        self._best = manager(os.path.join(self.directory, "best"), 1)

    def latest_step(self, *, best: bool = False) -> int | None:
        return (self._best if best else self._last).latest_step()

    def all_steps(self, *, best: bool = False) -> list[int]:
        return list((self._best if best else self._last).all_steps())

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``.

        Steps that already exist are never overwritten.
        """
        manager = self._best if best else self._last
        if step in manager.all_steps():
            return
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def wait(self) -> None:
        self._last.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._last.close()
        self._best.close()

    def restore(self, target: Any, *, step: int | None = None, best: bool = False):
        """Restores ``(state, meta)`` into the structure of ``target``.

        Raises:
          CheckpointError: no checkpoint, a damaged one, or one whose arrays do not
            match ``target`` (a different model or config), with the differing entry.
        """
        manager = self._best if best else self._last
        self.wait()
        step = manager.latest_step() if step is None else step
        where = os.path.join(manager.directory, str(step))
        if step is None:
            raise CheckpointError(f"no checkpoint in {manager.directory}")
        try:
            stored = manager.item_metadata(step)["state"]
            if stored is None:
                raise CheckpointError("no array metadata")
            stored_shapes = _leaf_shapes(stored)
        except Exception as err:  # noqa: BLE001 - orbax raises many types for bad files.
            raise CheckpointError(
                f"checkpoint {where} is damaged or unreadable ({type(err).__name__}: "
                f"{str(err)[:200]}). Delete that step folder to resume from an earlier one, "
                f"or use a fresh --workdir."
            ) from err
        wanted = _leaf_shapes(target)
        if stored_shapes != wanted:
            missing = sorted(set(wanted) - set(stored_shapes))
            extra = sorted(set(stored_shapes) - set(wanted))
            diff = [k for k in wanted if k in stored_shapes and wanted[k] != stored_shapes[k]]
            detail = (
                f"missing {missing[:3]}"
                if missing
                else f"unexpected {extra[:3]}"
                if extra
                else f"{diff[0]} has shape {stored_shapes[diff[0]]}, needs {wanted[diff[0]]}"
            )
            raise CheckpointError(
                f"checkpoint {where} does not match this config's model/optimizer ({detail}). "
                f"It was written by a different config: use a fresh --workdir or the config "
                f"that wrote it (workdir/config.json)."
            )
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {where} could not be restored ({type(err).__name__}: "
                f"{str(err)[:300]}). It is damaged or from a different config; delete that "
                f"step folder to resume from an earlier one, or use a fresh --workdir."
            ) from err
        return restored.state, dict(restored.meta or {})
