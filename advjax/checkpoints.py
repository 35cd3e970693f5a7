"""Orbax checkpoints of a training run: save, restore, resume, keep last K and best.

``workdir/checkpoints/<step>`` holds the last ``keep`` checkpoints and
``workdir/checkpoints/best/<step>`` the one with the best validation metric. Saves are
asynchronous and atomic (orbax writes to a temporary folder and renames it), so a run
killed mid-save leaves the previous checkpoint intact. Restoring always uses a target
tree; a checkpoint that does not fit it is reported as such, not as an orbax traceback.
A damaged checkpoint (unreadable files) is skipped for the previous good one with a
one-line warning; `Checkpointer.quarantine` moves it to ``<dir>/damaged/`` (never
deleting it) so that a resumed run can write that step again.

In a multi-process run every process takes part in every save and restore (orbax
coordinates them and process 0 writes the shared metadata); a restore target that lives
on a mesh makes each process read only its own shards; moving a damaged checkpoint is
done by process 0 between barriers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from advjax import distributed


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or belongs to a different model or config."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read; earlier checkpoints may still be good."""


# Test-only fault injection: "phase" or "phase@step" names where the process SIGKILLs
# itself (phases: before_save, during_save, after_save, between_best_and_last,
# during_eval), so tests can prove a run killed there resumes to the same report.
KILL_AT_ENV = "ADVJAX_KILL_AT"


def kill_armed(phase: str, step: int | None = None) -> bool:
    """Whether ``ADVJAX_KILL_AT`` names ``phase`` (at ``step``, if it gives one)."""
    spec = os.environ.get(KILL_AT_ENV, "")
    name, _, at = spec.partition("@")
    return bool(spec) and name == phase and (not at or (step is not None and int(at) == step))


def kill_point(phase: str, step: int | None = None) -> None:
    """SIGKILLs this process when `kill_armed` (a no-op unless the test hook is set)."""
    if kill_armed(phase, step):
        os.kill(os.getpid(), signal.SIGKILL)


def warn(message: str) -> None:
    """One line ``advjax: warning: ...`` on stderr."""
    print(f"advjax: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


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


@contextlib.contextmanager
def _quiet_orbax():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


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
        self.damaged: list[int] = []  # Steps the last `restore` skipped as damaged.

    def latest_step(self, *, best: bool = False) -> int | None:
        return (self._best if best else self._last).latest_step()

    def all_steps(self, *, best: bool = False) -> list[int]:
        return list((self._best if best else self._last).all_steps())

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``.

        Steps that already exist are never overwritten, and neither is a later step (a
        killed run that resumes replays steps whose checkpoints an earlier attempt of the
        same deterministic run may already have committed).
        """
        manager = self._best if best else self._last
        latest = manager.latest_step()
        if latest is not None and step <= latest:
            return
        kill_point("before_save", step)
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        kill_point("during_save", step)
        if kill_armed("after_save", step):
            manager.wait_until_finished()
            kill_point("after_save", step)

    def wait(self) -> None:
        self._last.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._last.close()
        self._best.close()

    def restore(
        self, target: Any, *, step: int | None = None, best: bool = False, fallback: bool = False
    ):
        """Restores ``(state, meta)`` into the structure of ``target``.

        Args:
          target: a pytree (arrays or shape structs) with the structure to restore into.
          step: the step to restore; the latest when None.
          best: the best checkpoint instead of the last ones.
          fallback: skip damaged checkpoints for the latest good one, with a one-line
            warning each; the steps skipped are listed in ``self.damaged``.

        Raises:
          CheckpointError: no (good) checkpoint, a damaged one (without ``fallback``), or
            one whose arrays do not match ``target`` (a different model or config).
        """
        manager = self._best if best else self._last
        self.wait()
        self.damaged = []
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {manager.directory}")
        for candidate in steps:
            try:
                return self._restore_step(manager, candidate, target)
            except DamagedCheckpointError as err:
                if not fallback:
                    raise
                self.damaged.append(candidate)
                warn(str(err))
        raise DamagedCheckpointError(
            f"every checkpoint in {manager.directory} is damaged (steps {self.damaged}); "
            f"use a fresh --workdir"
        )

    def quarantine(self, step: int, *, best: bool = False) -> str:
        """Moves the (damaged) checkpoint of ``step`` to ``<dir>/damaged/`` and returns
        where it went; nothing is deleted."""
        manager = self._best if best else self._last
        source = os.path.join(manager.directory, str(step))
        folder = os.path.join(manager.directory, "damaged")
        distributed.sync(f"advjax_quarantine_{step}_start")
        dest, n = os.path.join(folder, str(step)), 1
        while os.path.exists(dest):
            dest, n = os.path.join(folder, f"{step}.{n}"), n + 1
        distributed.sync(f"advjax_quarantine_{step}_named")
        if distributed.is_main():
            os.makedirs(folder, exist_ok=True)
            shutil.move(source, dest)
        distributed.sync(f"advjax_quarantine_{step}_moved")
        manager.reload()
        return dest

    def _restore_step(self, manager, step: int, target: Any):
        # Orbax logs every unreadable file at ERROR level; the one-line report is ours.
        with _quiet_orbax():
            return self._restore_step_quietly(manager, step, target)

    def _restore_step_quietly(self, manager, step: int, target: Any):
        where = os.path.join(manager.directory, str(step))
        try:
            stored = manager.item_metadata(step)["state"]
            if stored is None:
                raise CheckpointError("no array metadata")
            stored_shapes = _leaf_shapes(stored)
        except Exception as err:  # noqa: BLE001 - orbax raises many types for bad files.
            raise DamagedCheckpointError(
                f"checkpoint {where} is damaged or unreadable ({type(err).__name__}: "
                f"{str(err)[:120]})"
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
            raise DamagedCheckpointError(
                f"checkpoint {where} could not be restored, it is damaged "
                f"({type(err).__name__}: {str(err)[:120]})"
            ) from err
        return restored.state, dict(restored.meta or {})
