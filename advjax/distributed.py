"""Several processes, one run: JAX's multi-controller runtime and the tools around it.

A run on several hosts (a SLURM GPU cluster, a TPU pod slice, or several processes on one
machine through ``launch/local_cluster.sh``) starts one process per host, each running the
same command. `detect` decides from the launcher's flags (``--coordinator``,
``--num_processes``, ``--process_id``) or from the environment (SLURM, TPU pods, JAX's
own ``JAX_COORDINATOR_ADDRESS``) whether this process is one of several; `initialize`
then calls ``jax.distributed.initialize`` before anything touches a device. Without
either, nothing happens and the run is the usual single-process one.

Every process computes the same things in the same order (collectives need it). What
differs is only which examples each one touches: its share of every global batch
(`advjax.data.batch_indices`), its share of evaluation batches (gathered with
`allgather`), and what it writes: records come from process 0 only (`is_main`).

A process that dies stops the others: a peer blocked in a collective fails at once
(its connection to the dead process is reset), and every other process is terminated
by JAX's coordination service once the dead one has missed its heartbeats for
``ADVJAX_HEARTBEAT_TIMEOUT`` seconds (default 30), with the message "Terminating process
because the JAX distributed service detected fatal errors ... another task died".
Rerunning the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

HEARTBEAT_TIMEOUT_ENV = "ADVJAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
# How long process 0 waits for the others to connect (and they for it).
INITIALIZATION_TIMEOUT_S = 300


class DistributedError(RuntimeError):
    """Bad multi-process flags, or a cluster that cannot be joined; the message says why."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process joins a multi-process run.

    Attributes:
      source: "flags" (the launcher's flags), "slurm", "tpu" or "env"
        (``JAX_COORDINATOR_ADDRESS``); JAX detects the details for all but "flags".
      coordinator: ``host:port`` of process 0's coordination service ("flags" only).
      num_processes: how many processes take part ("flags" only).
      process_id: this process's index in ``[0, num_processes)`` ("flags" only).
    """

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _flag_int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(f"flag --{name}: got {value!r}; an integer is needed") from None


def detect(
    coordinator: str | None = None,
    num_processes: Any = None,
    process_id: Any = None,
    environ: Mapping[str, str] | None = None,
) -> ClusterSpec | None:
    """The cluster this process belongs to, or None for a single-process run.

    Explicit flags win: ``--coordinator``, ``--num_processes`` and ``--process_id`` go
    together (``--num_processes=1`` alone is a single process). Otherwise a SLURM job
    step of several tasks (``SLURM_NTASKS`` > 1), a TPU pod slice of several workers
    (``TPU_WORKER_HOSTNAMES`` lists more than one host, or ``MEGASCALE_COORDINATOR_ADDRESS``
    is set) or ``JAX_COORDINATOR_ADDRESS`` selects JAX's own cluster detection.

    Raises:
      DistributedError: incomplete or inconsistent flags.
    """
    env = os.environ if environ is None else environ
    given = {
        k: v
        for k, v in (
            ("coordinator", coordinator),
            ("num_processes", num_processes),
            ("process_id", process_id),
        )
        if v not in (None, "")
    }
    if given:
        n = _flag_int("num_processes", given["num_processes"]) if "num_processes" in given else None
        if n is not None and n < 1:
            raise DistributedError(f"flag --num_processes: got {n}; it must be >= 1")
        if n == 1 and "coordinator" not in given:
            if _flag_int("process_id", given.get("process_id", 0)) != 0:
                raise DistributedError("flag --process_id: a single process has id 0")
            return None
        missing = [k for k in ("coordinator", "num_processes", "process_id") if k not in given]
        if missing:
            raise DistributedError(
                f"flag --{missing[0]} is missing: --coordinator=host:port, "
                f"--num_processes=N and --process_id=i go together"
            )
        host, sep, port = str(given["coordinator"]).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise DistributedError(
                f"flag --coordinator: got {given['coordinator']!r}; expected host:port"
            )
        i = _flag_int("process_id", given["process_id"])
        if not 0 <= i < n:
            raise DistributedError(f"flag --process_id: got {i}; allowed: 0 to {n - 1}")
        return ClusterSpec("flags", str(given["coordinator"]), n, i)
    slurm_tasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or "1"
    if slurm_tasks.isdigit() and int(slurm_tasks) > 1 and "SLURM_PROCID" in env:
        return ClusterSpec("slurm")
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return ClusterSpec("tpu")
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return ClusterSpec("env")
    return None


def heartbeat_timeout_s() -> int:
    """Seconds of missed heartbeats after which the other processes are stopped."""
    raw = os.environ.get(HEARTBEAT_TIMEOUT_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_HEARTBEAT_TIMEOUT_S


def initialize(spec: ClusterSpec | None) -> None:
    """Joins the multi-process run described by ``spec`` (a no-op for None).

    Must run before anything creates a JAX backend. On CPU, collectives across processes
    use gloo. Processes other than 0 draw no progress bars.

    Raises:
      DistributedError: the cluster could not be joined (e.g. no coordinator answered).
    """
    if spec is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
            initialization_timeout=INITIALIZATION_TIMEOUT_S,
            heartbeat_timeout_seconds=heartbeat_timeout_s(),
            # A process leaving with an error waits this long for the others at exit.
            shutdown_timeout_seconds=heartbeat_timeout_s(),
        )
    except Exception as err:  # noqa: BLE001 - JAX raises several types here.
        where = f" at {spec.coordinator}" if spec.coordinator else f" ({spec.source})"
        raise DistributedError(
            f"could not join the multi-process run{where}: {' '.join(str(err).split())[:200]}"
        ) from None
    global _joined
    _joined = True
    if jax.process_index() != 0:
        os.environ["ADVJAX_PROGRESS"] = "0"


_joined = False


def joined() -> bool:
    """Whether this process joined a multi-process run through `initialize`."""
    return _joined


def failure_line(err: BaseException) -> str:
    """The line a process prints when it stops in a multi-process run."""
    detail = " ".join(str(err).split())[:300] or type(err).__name__
    return (
        f"advjax: error: process {jax.process_index()} of {jax.process_count()} stopped "
        f"({type(err).__name__}: {detail}); when another process died first, this is the "
        f"consequence. Run the same command again to resume from the last checkpoint."
    )


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """Whether this process writes the run's records (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather(x: np.ndarray) -> np.ndarray:
    """``x`` of every process, stacked along a new leading process axis.

    Every process passes an array of the same shape and dtype; in one process this is
    ``x[None]``.
    """
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    if x.size == 0:
        return np.empty((jax.process_count(), *x.shape), x.dtype)
    from jax.experimental import multihost_utils

    # Sent as raw bytes: without x64, JAX would narrow float64 and int64 values.
    raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    out = np.asarray(multihost_utils.process_allgather(raw, tiled=False))
    return np.ascontiguousarray(out).view(x.dtype).reshape(out.shape[0], *x.shape)


def host_local(tree):
    """A pytree of arrays this process can compute with on its own.

    In one process the tree is returned as is. With several, arrays that span other
    processes' devices (replicated or sharded) are fetched: replicated ones from a local
    replica, sharded ones gathered from every process (a collective: every process
    calls this together).
    """
    if jax.process_count() == 1:
        return tree

    def fetch(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(fetch, tree)


def global_arrays(tree, shardings):
    """Places a host-identical pytree on ``shardings`` (which may span processes).

    Every process passes the same values; each keeps only the shards of its own devices.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(a, sharding):
        if a is None:
            return None
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def local_rows(sharding, global_rows: int) -> slice:
    """The contiguous rows of a ``global_rows`` batch that this process's devices hold.

    Raises:
      ValueError: the rows of this process are not one contiguous block.
    """
    spans = {
        (index[0].start or 0, global_rows if index[0].stop is None else index[0].stop)
        for index in sharding.addressable_devices_indices_map((global_rows,)).values()
    }
    start, stop = min(s for s, _ in spans), max(e for _, e in spans)
    if sum(e - s for s, e in spans) != stop - start:
        raise ValueError(f"the rows of process {jax.process_index()} are not contiguous: {spans}")
    return slice(start, stop)


def allgather_objects(obj: Any) -> list[Any]:
    """``obj`` (any picklable value) of every process, in process order.

    For small, irregular results (e.g. the per-example outputs of the evaluation batches
    a process ran); every process calls it together. In one process: ``[obj]``.
    """
    if jax.process_count() == 1:
        return [obj]
    import pickle

    blob = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = allgather(np.asarray([blob.size], np.int64))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    blobs = allgather(padded)
    return [pickle.loads(blobs[p, : int(sizes[p])].tobytes()) for p in range(len(sizes))]
