"""Shards on Ray actors, with dead workers replaced and their share recomputed exactly.

Each actor is a shard (:class:`~sb3_ml3.distributed.shard.TaskShard`; model-free ML3's
:class:`~sb3_ml3.distributed.rl_shard.RLShard`) in its own process (one CPU): it builds
its problem once and keeps its tasks' optimizees (or ML3 models and envs) between outer steps, so only phi goes out (once per
step, through the object store: ``ray.put``) and only meta-gradient sums and task losses come back.

Recovery. The backend keeps the shards' state at the last :meth:`RayBackend.snapshot` (the driver takes
one at every checkpoint) and the (phi, iteration, reset) of every step since. When an actor dies, a new
one is started on the same tasks, loads the snapshot (or starts fresh if none was taken yet), replays the
steps since it with the recorded phi, and then computes the step in hand: every computation is a
deterministic function of those inputs, so the run continues as if nothing had happened.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sb3_ml3.distributed.shard import ProblemSpec, ShardResult, split_tasks

INSTALL_HINT = 'pip install -e ".[ray]"'


def _to_numpy(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def _to_torch(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in arrays.items()}  # a copy: Ray's arrays are read-only views


class ShardWorker:
    """The actor: the spec's shard (``spec.make_shard``) whose phi and meta-gradients travel as numpy arrays.

    Ray serialises numpy arrays without copies (out-of-band pickle buffers); torch tensors go through
    ``torch.save``-style pickling, which costs about 1.3 ms more per round trip here for the sine meta-loss.
    """

    def __init__(self, spec: ProblemSpec, task_ids: list[int], threads: int | None) -> None:
        self.shard = spec.make_shard(task_ids, threads)

    def step(self, phi: Mapping[str, np.ndarray], iteration: int, reset: bool) -> ShardResult:
        result = self.shard.step(_to_torch(phi), iteration, reset)
        result.grad_sum = _to_numpy(result.grad_sum)
        return result

    def state(self) -> dict[int, dict[str, Any]]:
        return self.shard.state()

    def load_state(self, state: Mapping[int, Mapping[str, Any]]) -> None:
        self.shard.load_state(state)

    def ping(self) -> int:
        return self.shard.ping()


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"Distributed meta-training (--workers N >= 1) needs Ray: {INSTALL_HINT} "
                          "(or pip install 'ray>=2.40'); --workers 0 runs the same meta-training in this process.") from exc
    return ray


class RayBackend:
    """``workers`` Ray actors, each owning a contiguous share of the tasks (:func:`split_tasks`).

    :param address: an existing cluster (``"auto"``, ``"ray://host:10001"``, ...); default: a local Ray
        started here with ``workers`` CPUs (and shut down by :meth:`close`). A Ray already initialised in
        this process is used as it is.
    :param max_restarts: replacements of one worker in a row before the run gives up.
    """

    def __init__(self, spec: ProblemSpec, workers: int, address: str | None = None, threads: int = 1,
                 max_restarts: int = 3) -> None:
        ray = require_ray()
        self.ray = ray
        self.spec = spec
        self.shares = split_tasks(spec.n_tasks, workers)
        self.n_workers = workers
        self.threads = threads
        self.max_restarts = max_restarts
        self.restarts = 0
        self._session = RaySession(workers, address)
        self.init_s = self._session.__enter__().init_s
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ShardWorker)
        start = time.perf_counter()
        self.actors = [self._start(k) for k in range(workers)]
        ray.get([actor.ping.remote() for actor in self.actors])  # fail here, not mid-run, if a worker cannot build
        self.actors_s = time.perf_counter() - start
        self._snapshot: dict[int, dict[str, Any]] | None = None
        self._history: list[tuple[dict[str, np.ndarray], int, bool]] = []
        self._bytes: dict[str, int] | None = None

    def _start(self, k: int) -> Any:
        return self._actor_class.remote(self.spec, self.shares[k], self.threads)

    def step(self, phi: Mapping[str, torch.Tensor], iteration: int, reset: bool) -> list[ShardResult]:
        """One outer step on every worker, in parallel; a worker that died is replaced and its share recomputed."""
        phi = _to_numpy({k: v.detach().clone() for k, v in phi.items()})  # a copy: the driver's Adam steps phi in place
        phi_ref = self.ray.put(phi) if self.n_workers > 1 else phi  # one copy in the object store for all workers
        refs = [actor.step.remote(phi_ref, iteration, reset) for actor in self.actors]
        results = [self._get(k, ref, phi, iteration, reset) for k, ref in enumerate(refs)]
        for result in results:
            result.grad_sum = _to_torch(result.grad_sum)
        self._history.append((phi, iteration, reset))
        if self._bytes is None and any(r.grad_sum for r in results):  # sizes do not change: measure once (with
            # gradients: a model-free run's first step has none)
            replies = [ShardResult(_to_numpy(r.grad_sum), r.task_losses, r.task_ids, r.compute_s, r.held, r.stats)
                       for r in results]
            self._bytes = {"bytes_to_workers": len(pickle.dumps(phi, protocol=5)) * self.n_workers,
                           "bytes_from_workers": sum(len(pickle.dumps(r, protocol=5)) for r in replies),
                           "phi_values": int(sum(v.size for v in phi.values()))}
        return results

    def _get(self, k: int, ref: Any, phi: dict[str, np.ndarray], iteration: int, reset: bool) -> ShardResult:
        errors = (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError)
        for attempt in range(self.max_restarts + 1):
            try:
                return self.ray.get(ref)
            except errors as exc:
                if attempt == self.max_restarts:
                    raise RuntimeError(f"Ray worker {k} (tasks {self.shares[k]}) died {attempt + 1} times in a row "
                                       f"at outer step {iteration}; last error: {exc}") from exc
                logging.getLogger(__name__).warning("Ray worker %d died at outer step %d; restarting it and "
                                                    "recomputing its share (%s)", k, iteration, type(exc).__name__)
                ref = self._replace(k, phi, iteration, reset)
        raise AssertionError("unreachable")

    def _replace(self, k: int, phi: dict[str, np.ndarray], iteration: int, reset: bool) -> Any:
        """A new actor for share ``k`` brought to the state before ``iteration``; the ref of that step on it."""
        return self._rebuild(k).step.remote(phi, iteration, reset)

    def _rebuild(self, k: int) -> Any:
        """Start a new actor for share ``k``: load the snapshot (if any) and replay the steps since it."""
        self.restarts += 1
        actor = self._start(k)
        self.actors[k] = actor
        if self._snapshot is not None:
            self.ray.get(actor.load_state.remote({i: self._snapshot[i] for i in self.shares[k]}))
        for past_phi, past_iteration, past_reset in self._history:  # replay since the snapshot
            self.ray.get(actor.step.remote(past_phi, past_iteration, past_reset))
        return actor

    def _call_all(self, method: str, *args_per_actor: Any) -> list[Any]:
        """``method`` on every actor (``args_per_actor[k]`` for actor k, if given), replacing dead ones."""
        errors = (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError)
        out = []
        for k in range(self.n_workers):
            args = (args_per_actor[0][k],) if args_per_actor else ()
            for attempt in range(self.max_restarts + 1):
                try:
                    out.append(self.ray.get(getattr(self.actors[k], method).remote(*args)))
                    break
                except errors:
                    if attempt == self.max_restarts:
                        raise
                    self._rebuild(k)
        return out

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """Every task's state, gathered from the workers; also the new base of recovery (history cleared)."""
        states: dict[int, dict[str, Any]] = {}
        for part in self._call_all("state"):
            states.update(part)
        self._snapshot, self._history = states, []
        return states

    def restore(self, states: Mapping[int, Mapping[str, Any]]) -> None:
        """Load saved task states into the workers (a resumed run); they become the recovery base."""
        states = {int(i): dict(s) for i, s in states.items()}
        self._call_all("load_state", [{i: states[i] for i in share if i in states} for share in self.shares])
        self._snapshot, self._history = states, []

    def traffic(self) -> dict[str, int]:
        """Bytes (pickled) of phi sent to all workers and of their replies, per outer step."""
        return dict(self._bytes or {"bytes_to_workers": 0, "bytes_from_workers": 0})

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        self._session.__exit__(None, None, None)


class RaySession:
    """``with RaySession(workers, address):`` one Ray for several runs (e.g. all seeds of an experiment).

    Starts a local Ray with ``workers`` CPUs, or connects to ``address``, unless Ray is already up in this
    process; shuts it down on exit only if it started it. ``init_s``: the time ``ray.init`` took (0 if reused).
    """

    def __init__(self, workers: int, address: str | None = None) -> None:
        self.workers, self.address = workers, address
        self.init_s = 0.0
        self.started = False

    def __enter__(self) -> "RaySession":
        ray = require_ray()
        if not ray.is_initialized():
            start = time.perf_counter()
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            if self.address is None:
                ray.init(num_cpus=self.workers, **options)
            else:
                ray.init(address=self.address, **options)
            self.init_s = time.perf_counter() - start
            self.started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            require_ray().shutdown()


__all__ = ["INSTALL_HINT", "RayBackend", "RaySession", "require_ray"]
