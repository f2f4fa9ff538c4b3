"""Multi-host runs: joining the cluster, agreeing across hosts, sharing work between them.

Every host runs the same program. Decisions that hosts could reach differently (stop now, the
template date) are agreed through a collective; work that needs no collective (STAR scoring,
generation) is split into per-host shares whose results are gathered back in order; only
process 0 writes shared files. A host that dies stops sending heartbeats and JAX's coordination
service fails the others after `config.cluster.heartbeat_timeout_s`, so no host waits forever.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

__all__ = ["agree_any", "allgather_objects", "barrier", "broadcast_object", "gather_shares", "initialize",
           "is_multihost", "is_writer", "round_robin", "share"]


def initialize(config) -> None:
    """`jax.distributed.initialize` when `config.distributed` is set: from `config.cluster`'s
    explicit coordinator, process count and id, else as detected (SLURM, Cloud TPU, env vars)."""
    if not config.get("distributed"):
        return
    c = config.cluster
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":  # CPU hosts need a collectives backend
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=c.coordinator or None,
        num_processes=c.num_processes if c.num_processes > 0 else None,
        process_id=c.process_id if c.process_id >= 0 else None,
        initialization_timeout=int(c.init_timeout_s),
        heartbeat_timeout_seconds=int(c.heartbeat_timeout_s),
    )


def is_multihost() -> bool:
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this host writes the files every host computed the same contents for."""
    return jax.process_index() == 0


def agree_any(flag: bool) -> bool:
    """True on every host if it is True on any host (a collective: every host must call it)."""
    if not is_multihost():
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def allgather_objects(obj) -> list:
    """Every host's `obj` (picklable), in process order, on every host."""
    if not is_multihost():
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [pickle.loads(row[:size].tobytes()) for row, size in zip(gathered, sizes)]


def broadcast_object(obj):
    """Process 0's `obj` (picklable) on every host, for what hosts could see differently (the
    clock, files only process 0 reads). A collective: every host must call it."""
    if not is_multihost():
        return obj
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
    sent = data if is_writer() else np.zeros(size, np.uint8)  # only process 0's bytes arrive; shapes must match
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(sent)).tobytes())


def share(n: int) -> list[int]:
    """Indices of the `n` items this host works on (every P-th, so similar neighbours spread)."""
    return list(range(jax.process_index(), n, jax.process_count()))


def gather_shares(local: Sequence, n: int) -> list:
    """The full list of `n` results, on every host, from each host's results for its `share(n)`."""
    out = [None] * n
    for process, results in enumerate(allgather_objects(list(local))):
        for i, result in zip(range(process, n, jax.process_count()), results):
            out[i] = result
    return out


def round_robin(items: Sequence, fn: Callable[[object, int], list], shared: bool = True) -> Iterator[list]:
    """`fn(item, index)` (a list of results) for every item, yielded round by round on every host.

    `shared` (several hosts, each with its own copy of the model): each round is P items, host p
    computes the round's p-th, and the round's results are gathered to every host in item order;
    otherwise every host computes every item. A round is yielded before the next one starts, so callers
    record it (a resumable file) as it finishes."""
    hosts = jax.process_count() if shared else 1
    for start in range(0, len(items), hosts):
        k = start + (jax.process_index() if hosts > 1 else 0)
        results = list(fn(items[k], k)) if k < len(items) else []
        if hosts > 1:
            results = [result for host_results in allgather_objects(results) for result in host_results]
        yield results


def barrier(name: str) -> None:
    """Wait until every host gets here (a no-op on one host)."""
    if is_multihost():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
