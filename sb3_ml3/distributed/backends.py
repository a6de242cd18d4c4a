"""Where the shards of a meta-training run live: in this process, or on Ray workers.

Both backends answer the same four calls of the driver (:class:`sb3_ml3.distributed.trainer.DistributedMetaTrainer`):
``step`` (one outer step on every shard), ``snapshot`` / ``restore`` (every task's optimizee and generator,
for checkpoints and for replacing a dead worker) and ``close``. Ray is imported only by
:mod:`sb3_ml3.distributed.ray_backend`, and only when ``workers >= 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from sb3_ml3.distributed.shard import ProblemSpec, ShardResult, split_tasks

ShardStates = dict[int, dict[str, Any]]


class Backend(Protocol):
    """The driver's view of its workers."""

    n_workers: int
    restarts: int

    def step(self, phi: Mapping[str, torch.Tensor], iteration: int, reset: bool) -> list[ShardResult]: ...

    def snapshot(self) -> ShardStates: ...

    def restore(self, states: Mapping[int, Mapping[str, Any]]) -> None: ...

    def close(self) -> None: ...


class LocalBackend:
    """All tasks in one shard in this process: the single-process meta-trainer (``--workers 0``)."""

    n_workers = 0
    restarts = 0

    def __init__(self, spec: ProblemSpec) -> None:
        self.shard = spec.make_shard(split_tasks(spec.n_tasks, 1)[0])
        self.init_s = 0.0

    def step(self, phi: Mapping[str, torch.Tensor], iteration: int, reset: bool) -> list[ShardResult]:
        return [self.shard.step(phi, iteration, reset)]

    def snapshot(self) -> ShardStates:
        return self.shard.state()

    def restore(self, states: Mapping[int, Mapping[str, Any]]) -> None:
        self.shard.load_state(states)

    def close(self) -> None:
        pass

    def traffic(self) -> dict[str, int]:
        return {"bytes_to_workers": 0, "bytes_from_workers": 0}


def make_backend(spec: ProblemSpec, workers: int = 0, address: str | None = None, threads: int = 1,
                 max_restarts: int = 3) -> Backend:
    """``workers == 0``: :class:`LocalBackend`; ``workers >= 1``: that many Ray actors, on a local Ray
    (started here with ``workers`` CPUs) or on the cluster at ``address``."""
    if workers < 0:
        raise ValueError(f"--workers must be 0 (this process, no Ray) or a positive number of Ray workers, got {workers}.")
    if workers == 0:
        if address is not None:
            raise ValueError("--address names a Ray cluster to run the workers on; give --workers N >= 1 with it.")
        return LocalBackend(spec)
    from sb3_ml3.distributed.ray_backend import RayBackend

    return RayBackend(spec, workers, address=address, threads=threads, max_restarts=max_restarts)


__all__ = ["Backend", "LocalBackend", "ShardStates", "make_backend"]
