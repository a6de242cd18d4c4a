"""Model-free ML3 on shards: each task is an ML3 model with its own envs, policy, critic and random streams.

A *task* of a distributed model-free meta-training is one of the ``n_tasks`` ML3 models that meta-train
the same phi (Algorithm 4 with the outer step's expectation over several policies and goal streams). Task
``i`` of a run with seed ``s`` is ``ML3(meta_train=True, seed=s + TASK_SEED_STRIDE * i)`` on its own train-split
envs, built exactly as :func:`sb3_ml3.experiments.meta_train_loss` builds its single model, so task 0 of a
one-task run *is* the single-process run.

One outer step on a shard, for each of its tasks, with the phi the driver sent:

1. the inner update (:meth:`~sb3_ml3.ml3.ML3.inner_update`) on the rollout of the previous step, with this
   phi (the single process takes it right after its outer step, with the same phi);
2. a new rollout with the updated policy;
3. grad_phi L_T of that update on the new rollout (:meth:`~sb3_ml3.ml3.ML3.outer_gradient`), added to the
   shard's sum; the first step has no update to differentiate and answers no gradient.

SB3 draws actions from torch's global generator and shuffles minibatches with numpy's, so each task keeps
its own state of both and installs it around its step: what a task computes does not depend on which
worker holds it or what ran before it in that process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sb3_ml3.distributed.shard import ShardResult, add_gradients, shard_task_ids

#: task ``i`` of a run with seed ``s`` has seed ``s + TASK_SEED_STRIDE * i``
TASK_SEED_STRIDE = 1000


@dataclass(frozen=True)
class RLProblemSpec:
    """A model-free meta-training as data that travels to the workers.

    :param env_id: the goal env; tasks train on its **train** split.
    :param seed: the run's seed (task 0's).
    :param n_tasks: ML3 models whose meta-gradients each outer step averages.
    :param settings: the meta-training settings of :func:`sb3_ml3.experiments.meta_train_loss` (``n_envs``,
        ``normalize``, ``meta_train_net_arch``, ``meta_train``: the ML3 keyword arguments).
    :param total_timesteps: each task's env-step horizon (the progress that step-size schedules read).
    :param fingerprint: what else identifies the run (JSON-able); a checkpoint resumes only the same one.
    """

    env_id: str
    seed: int
    n_tasks: int
    settings: Mapping[str, Any]
    total_timesteps: int
    env_kwargs: Mapping[str, Any] | None = None
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_tasks < 1 or self.total_timesteps < 1:
            raise ValueError(f"Need n_tasks >= 1 and a positive budget, got {self.n_tasks} and {self.total_timesteps}.")
        meta_train = dict(self.settings.get("meta_train", {}))
        if int(meta_train.get("meta_epochs", 1)) != 1:
            raise ValueError("Distributed meta-training takes one outer step per rollout; set meta_epochs=1.")

    def task_seed(self, task_index: int) -> int:
        return int(self.seed) + TASK_SEED_STRIDE * int(task_index)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint it continues."""
        from sb3_ml3.atomic import jsonable

        return {"env_id": self.env_id, "seed": int(self.seed), "n_tasks": int(self.n_tasks),
                "total_timesteps": int(self.total_timesteps), "settings": jsonable(dict(self.settings)),
                "env_kwargs": jsonable(dict(self.env_kwargs or {})), "problem": jsonable(dict(self.fingerprint))}

    def make_env(self, task_index: int) -> Any:
        from sb3_ml3.experiments.runs import make_train_env

        s = self.settings
        return make_train_env(self.env_id, int(s["n_envs"]), self.task_seed(task_index), split="train",
                              normalize=s.get("normalize", False), gamma=float(s["meta_train"].get("gamma", 0.99)),
                              env_kwargs=dict(self.env_kwargs or {}))

    def build_model(self, task_index: int) -> Any:
        """Task ``task_index``'s ML3 model, as :func:`~sb3_ml3.experiments.meta_train_loss` builds its one."""
        from sb3_ml3.experiments.settings import policy_kwargs_for
        from sb3_ml3.ml3 import ML3

        s = self.settings
        return ML3("MlpPolicy", self.make_env(task_index), meta_train=True, seed=self.task_seed(task_index),
                   policy_kwargs=policy_kwargs_for(s.get("meta_train_net_arch", [64, 64])), **dict(s["meta_train"]))

    def make_shard(self, task_ids: Sequence[int], threads: int | None = None) -> "RLShard":
        return RLShard(self, task_ids, threads)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.as_tensor(keys.astype(np.int64)),
            "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss)}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), int(state["numpy_has_gauss"]),
                         float(state["numpy_gauss"])))


def _running_stats(rms: Any) -> dict[str, Any]:
    return {"mean": torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)),
            "var": torch.as_tensor(np.asarray(rms.var, dtype=np.float64)), "count": float(rms.count)}


def _load_running_stats(rms: Any, state: Mapping[str, Any]) -> None:
    rms.mean = state["mean"].numpy().copy()
    rms.var = state["var"].numpy().copy()
    rms.count = float(state["count"])


class RLShard:
    """The ML3 models of tasks ``task_ids``, stepped one outer step at a time with the driver's phi."""

    def __init__(self, spec: RLProblemSpec, task_ids: Sequence[int], threads: int | None = None) -> None:
        import sb3_ml3.envs  # noqa: F401  (registers the goal envs in a fresh worker process)

        self.spec = spec
        self.task_ids = shard_task_ids(task_ids, spec.n_tasks, threads)
        self.models: dict[int, Any] = {}
        self.callbacks: dict[int, Any] = {}
        self.rng: dict[int, dict[str, Any]] = {}
        self.data: dict[int, dict[str, torch.Tensor] | None] = {}
        for i in self.task_ids:
            self.models[i] = spec.build_model(i)  # seeds the global generators with the task's seed
            self._start(i, reset_num_timesteps=True)

    def _start(self, i: int, reset_num_timesteps: bool) -> None:
        """SB3's ``learn`` set-up for task ``i`` (env reset, logger, callback), then its generators' state."""
        model = self.models[i]
        _, callback = model._setup_learn(self.spec.total_timesteps, None, reset_num_timesteps, "ML3", False)
        callback.on_training_start(locals(), globals())
        self.callbacks[i] = callback
        self.rng[i] = _rng_state()
        self.data[i] = None

    def step(self, phi: Mapping[str, torch.Tensor], iteration: int, reset: bool = False) -> ShardResult:
        """One outer step of every task (``reset`` is the supervised shards'; policies reset themselves)."""
        start = time.perf_counter()
        grad_sum: dict[str, torch.Tensor] | None = None
        losses, answered, stats = [], [], {}
        for i in self.task_ids:
            model = self.models[i]
            _set_rng_state(self.rng[i])
            with torch.no_grad():
                for name, p in model.meta_loss.named_parameters():
                    p.copy_(torch.as_tensor(phi[name]))
            if self.data[i] is not None:
                model.inner_update(self.data[i])
            model.collect_rollouts(model.env, self.callbacks[i], model.rollout_buffer, n_rollout_steps=model.n_steps)
            model._update_current_progress_remaining(model.num_timesteps, self.spec.total_timesteps)
            data = model.prepare_rollout()
            self.data[i] = data
            if data is not None and model.has_pending_outer_step:
                grads, value = model.outer_gradient(data)
                grad_sum = add_gradients(grad_sum, grads)
                losses.append(float(value))
                answered.append(i)
            self.rng[i] = _rng_state()
            stats[i] = self._stats(model)
        return ShardResult(grad_sum or {}, losses, answered, time.perf_counter() - start, held=len(self.task_ids),
                           stats=stats)

    @staticmethod
    def _stats(model: Any) -> dict[str, Any]:
        episodes = [float(info["r"]) for info in model.ep_info_buffer or []]
        out: dict[str, Any] = {"num_timesteps": int(model.num_timesteps),
                               "ep_rew_mean": float(np.mean(episodes)) if episodes else float("nan"),
                               "policy_updates": int(model.n_policy_updates)}
        normalize = model.get_vec_normalize_env()
        if normalize is not None and normalize.norm_obs:
            out["obs_rms"] = {"mean": np.asarray(normalize.obs_rms.mean).tolist(),
                              "var": np.asarray(normalize.obs_rms.var).tolist(), "count": float(normalize.obs_rms.count)}
        return out

    def state(self) -> dict[int, dict[str, Any]]:
        """Per task: its ML3 model file (bytes as a uint8 tensor: policy, critic, optimizers, pending outer step,
        counters; :meth:`sb3_ml3.ml3.ML3.save`, which never runs code when loaded), its observation and return
        normalisation and its generators. The rollout awaiting its inner step is not kept: a restored task draws
        a fresh one with the same policy."""
        out: dict[int, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as folder:
            for i in self.task_ids:
                model = self.models[i]
                path = os.path.join(folder, f"task{i}.zip")
                model.save(path)
                with open(path, "rb") as f:
                    blob = f.read()
                entry: dict[str, Any] = {"model": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                                         "rng": dict(self.rng[i])}
                normalize = model.get_vec_normalize_env()
                if normalize is not None:
                    entry["obs_rms"] = _running_stats(normalize.obs_rms)
                    entry["ret_rms"] = _running_stats(normalize.ret_rms)
                out[i] = entry
        return out

    def load_state(self, state: Mapping[int, Mapping[str, Any]]) -> None:
        """Rebuild every task from what :meth:`state` returned: fresh envs with the saved normalisation, reset."""
        from sb3_ml3.ml3 import ML3

        missing = [i for i in self.task_ids if i not in state]
        if missing:
            raise KeyError(f"The saved state has no entry for tasks {missing}; it belongs to another run.")
        with tempfile.TemporaryDirectory() as folder:
            for i in self.task_ids:
                saved = state[i]
                path = os.path.join(folder, f"task{i}.zip")
                with open(path, "wb") as f:
                    f.write(saved["model"].numpy().tobytes())
                self.models[i].env.close()
                env = self.spec.make_env(i)
                normalize = env if hasattr(env, "obs_rms") else None
                if normalize is not None and "obs_rms" in saved:
                    _load_running_stats(normalize.obs_rms, saved["obs_rms"])
                    _load_running_stats(normalize.ret_rms, saved["ret_rms"])
                self.models[i] = ML3.load(path, env=env)
                self._start(i, reset_num_timesteps=False)
                self.rng[i] = dict(saved["rng"])

    def ping(self) -> int:
        return len(self.task_ids)


__all__ = ["RLProblemSpec", "RLShard", "TASK_SEED_STRIDE"]
