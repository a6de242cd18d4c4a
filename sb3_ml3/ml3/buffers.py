"""ML3's rollout buffer: SB3's ``RolloutBuffer`` plus what ML3's losses read, with bad samples fenced off.

Beside SB3's fields (observations, actions, values, log-probabilities, GAE advantages and returns) it
keeps, per step and env:

* ``timesteps``: the step's index within its episode (a meta-loss input);
* ``task_rewards``: a per-step value the env reports in its ``info`` (``ML3(task_reward=...)``), staged
  by ML3 from the infos before SB3 adds the step, so that ML3 needs no ``collect_rollouts`` of its own;
* ``valid``: whether the step's reward (and task reward) was finite;

* ``task_frames``: the step's observation in the task's frame (the ``task_frame`` meta-input, width
  ``task_frame_dim``; none when 0), staged by ML3 from the raw observation (:mod:`sb3_ml3.ml3.task_frame`);

and per rollout ``policy_age``, the inner updates the collecting policy had had (set by ML3; every
sample carries it as ``policy_ages``).

**Non-finite rewards never reach a network.** A NaN or inf reward is stored as 0 with ``valid=False``:
GAE stays finite, and the invalid samples are left out of every minibatch, of the critic's regression
and of the task loss. They are counted (``n_invalid``, logged by ML3 as ``train/invalid_samples``); after
``max_invalid_in_row`` consecutive env steps with one, the env is broken rather than noisy, and the
buffer raises.

Sample order is SB3's: after :meth:`finalize`, arrays are flat and env-major (``swap_and_flatten``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

#: consecutive env steps with a non-finite reward after which the buffer gives up
MAX_INVALID_IN_ROW = 100


class NonFiniteRewardError(RuntimeError):
    """The env keeps returning NaN or inf rewards: training cannot go on meaningfully."""


class ML3RolloutBufferSamples(NamedTuple):
    """One minibatch of valid samples; ``task_weights`` is the REINFORCE weight and the ``advantage`` input."""

    observations: torch.Tensor
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    rewards: torch.Tensor
    episode_starts: torch.Tensor
    timesteps: torch.Tensor
    task_weights: torch.Tensor
    policy_ages: torch.Tensor


#: the per-step arrays that travel with the samples, flattened together by :meth:`ML3RolloutBuffer.finalize`
_ARRAYS = ("observations", "actions", "values", "log_probs", "advantages", "returns", "rewards", "episode_starts",
           "timesteps", "task_weights", "task_rewards", "valid", "task_frames")


class ML3RolloutBuffer(RolloutBuffer):
    """SB3's rollout buffer with ML3's per-step fields and the guard against non-finite rewards.

    :param max_invalid_in_row: raise :class:`NonFiniteRewardError` after this many consecutive env steps
        with a non-finite reward in some env.
    :param env_name: how errors name the env (its id).
    :param task_frame_dim: width of the staged ``task_frames`` (0: none; minibatches then have no such key).
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space,
                 device: torch.device | str = "auto", gae_lambda: float = 1, gamma: float = 0.99, n_envs: int = 1,
                 max_invalid_in_row: int = MAX_INVALID_IN_ROW, env_name: str = "the env",
                 task_frame_dim: int = 0) -> None:
        self.max_invalid_in_row = int(max_invalid_in_row)
        self.env_name = env_name
        self.n_invalid = 0  # over the buffer's life
        self._invalid_in_row = 0
        self._staged_task_reward: np.ndarray | None = None
        self.task_frame_dim = int(task_frame_dim)
        self._staged_task_frame: np.ndarray | None = None
        self._episode_t = np.zeros(n_envs, dtype=np.int64)  # carries over from one rollout to the next
        #: inner updates the collecting policy had had (the "policy_age" input of every sample); ML3 sets it
        self.policy_age = 0
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        super().reset()
        shape = (self.buffer_size, self.n_envs)
        self.timesteps = np.zeros(shape, dtype=np.float32)
        self.task_rewards = np.zeros(shape, dtype=np.float64)
        self.task_weights = np.zeros(shape, dtype=np.float32)
        self.valid = np.ones(shape, dtype=bool)
        self.task_frames = np.zeros((*shape, self.task_frame_dim), dtype=np.float32)
        self.has_task_rewards = False
        self._grid: dict[str, np.ndarray] = {}

    def stage_task_reward(self, values: np.ndarray) -> None:
        """The ``task_reward`` of the step SB3 is about to :meth:`add` (one value per env)."""
        self._staged_task_reward = np.asarray(values, dtype=np.float64).reshape(self.n_envs)

    def stage_task_frame(self, values: np.ndarray) -> None:
        """The task-frame features of the observation SB3 is about to :meth:`add` (one row per env)."""
        self._staged_task_frame = np.asarray(values, dtype=np.float32).reshape(self.n_envs, self.task_frame_dim)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, episode_start: np.ndarray,
            value: torch.Tensor, log_prob: torch.Tensor) -> None:
        reward = np.asarray(reward, dtype=np.float32).reshape(self.n_envs)
        bad = ~np.isfinite(reward)
        if self._staged_task_reward is not None:
            task_reward = self._staged_task_reward
            bad |= ~np.isfinite(task_reward)
            self.task_rewards[self.pos] = np.where(bad, 0.0, task_reward)
            self.has_task_rewards = True
            self._staged_task_reward = None
        self.valid[self.pos] = ~bad
        if bad.any():
            self.n_invalid += int(bad.sum())
            self._invalid_in_row += 1
            if self._invalid_in_row >= self.max_invalid_in_row:
                raise NonFiniteRewardError(
                    f"{self.env_name} returned a NaN or inf reward in {self._invalid_in_row} consecutive steps "
                    f"({self.n_invalid} samples so far): check the env's reward (or a VecNormalize whose return "
                    "statistics a NaN has poisoned); ML3 skips such samples but cannot train on none."
                )
            reward = np.where(bad, 0.0, reward).astype(np.float32)
        else:
            self._invalid_in_row = 0
        if self.task_frame_dim:
            if self._staged_task_frame is None:
                raise RuntimeError("ML3RolloutBuffer: a step was added without its staged task_frame features.")
            self.task_frames[self.pos] = self._staged_task_frame
            self._staged_task_frame = None
        starts = np.asarray(episode_start).reshape(self.n_envs)
        t = np.where(starts > 0, 0, self._episode_t)
        self.timesteps[self.pos] = t
        self._episode_t = t + 1
        super().add(obs, action, reward, episode_start, value, log_prob)

    # ------------------------------------------------------------------ task weights (before finalize)
    def compute_task_weights(self, task_loss: str, normalize: bool) -> None:
        """The REINFORCE weights: the GAE advantage (``"advantage"``) or the centred return (``"return"``),
        normalised over the rollout's valid samples when ``normalize``."""
        if not self.valid.any():
            self.task_weights = np.zeros_like(self.advantages)
            return
        weights = self.advantages if task_loss == "advantage" else self.returns - self.returns[self.valid].mean()
        self.task_weights = _normalized(weights.astype(np.float32), self.valid, normalize, centre=True)
        if "task_weights" in self._grid:
            self._grid["task_weights"] = self.task_weights.reshape(self.n_envs, self.buffer_size).T

    def task_reward_weights(self, gamma: float, gae_lambda: float, normalize: bool, values: np.ndarray | None = None,
                            last_values: np.ndarray | None = None,
                            last_dones: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The task-loss weights of the ``task_reward`` (n_steps, n_envs), and the task critic's targets.

        Without ``values``: centred discounted rewards-to-go that stop at episode starts and at the end of
        the rollout, centred on the mean over envs at the same step (no critic, no bootstrap). With
        ``values`` (V_task of the rollout's states), ``last_values`` and ``last_dones``: GAE(gamma, lambda)
        advantages of the task reward, bootstrapped at the rollout's end, cut at episode ends, and the
        lambda-returns V_task learns.
        """
        if not self.has_task_rewards:
            raise RuntimeError("No task rewards were staged in this rollout: ML3 stages them from the infos.")
        rewards, starts, n_steps = self.grid("task_rewards"), self.grid("episode_starts"), self.buffer_size
        running = np.zeros(self.n_envs)
        weights = np.zeros_like(rewards)
        for k in reversed(range(n_steps)):
            if values is None:
                nxt = starts[k + 1] if k + 1 < n_steps else np.ones(self.n_envs)
                running = rewards[k] + gamma * running * (1.0 - nxt)
            else:
                if k + 1 < n_steps:
                    not_end, next_values = 1.0 - starts[k + 1], values[k + 1]
                else:
                    not_end, next_values = 1.0 - last_dones, last_values
                delta = rewards[k] + gamma * next_values * not_end - values[k]
                running = delta + gamma * gae_lambda * not_end * running
            weights[k] = running
        if values is None:
            centred = weights - weights.mean(axis=1, keepdims=True) if self.n_envs > 1 else weights - weights.mean()
            return _normalized(centred, self.grid("valid"), normalize, centre=False), None
        return _normalized(weights, self.grid("valid"), normalize, centre=True), weights + values

    # ------------------------------------------------------------------ samples (after finalize)
    def finalize(self) -> None:
        """Flatten every per-step array (env-major, as SB3's minibatches are); call once per rollout."""
        if not self.generator_ready:
            for name in _ARRAYS:
                self._grid[name] = self.__dict__[name]
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True

    def grid(self, name: str) -> np.ndarray:
        """A per-step array in its (n_steps, n_envs, ...) layout, before or after :meth:`finalize`."""
        if name not in _ARRAYS:
            raise KeyError(f"{name!r} is not a per-step array of the buffer ({list(_ARRAYS)}).")
        return self._grid[name] if self.generator_ready else self.__dict__[name]

    def flat(self, array: np.ndarray) -> torch.Tensor:
        """A (n_steps, n_envs, ...) array of this rollout as a flat float tensor of its valid samples."""
        flat = self.swap_and_flatten(np.asarray(array))[self.valid_indices]
        if flat.ndim == 2 and flat.shape[1] == 1:
            flat = flat[:, 0]
        return self.to_torch(flat.astype(np.float32))

    @property
    def valid_indices(self) -> np.ndarray:
        valid = self.valid if self.generator_ready else self.swap_and_flatten(self.valid)
        return np.flatnonzero(valid.reshape(-1))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The valid samples of the (finalized) rollout as flat tensors keyed like the minibatches."""
        self.finalize()
        return self._batch(self.valid_indices)

    def minibatches(self, batch_size: int, n_epochs: int) -> list[dict[str, torch.Tensor]]:
        """``n_epochs`` passes over a fresh permutation of the valid samples, in minibatches of ``batch_size``
        (the last, smaller one of each pass is dropped, so that every inner step sees as many samples)."""
        self.finalize()
        valid = self.valid_indices
        batches = []
        for _ in range(n_epochs):
            order = valid[np.random.permutation(len(valid))]
            for start in range(0, len(order) - batch_size + 1, batch_size):
                batches.append(self._batch(order[start:start + batch_size]))
        return batches

    def get(self, batch_size: int | None = None) -> Iterator[ML3RolloutBufferSamples]:  # type: ignore[override]
        """SB3's interface: one pass over the valid samples (all of them when ``batch_size`` is None)."""
        self.finalize()
        valid = self.valid_indices
        size = len(valid) if batch_size is None else batch_size
        order = valid[np.random.permutation(len(valid))]
        for start in range(0, len(order), size):
            yield self._samples(order[start:start + size])

    def _batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """The samples at ``index`` as a dict of tensors, with ``task_frames`` where the buffer keeps them."""
        batch = self._samples(index)._asdict()
        if self.task_frame_dim:
            batch["task_frames"] = self.to_torch(self.task_frames[index])
        return batch

    def _samples(self, index: np.ndarray) -> ML3RolloutBufferSamples:
        data = (self.observations[index], self.actions[index].astype(np.float32, copy=False),
                self.values[index].flatten(), self.log_probs[index].flatten(), self.advantages[index].flatten(),
                self.returns[index].flatten(), self.rewards[index].flatten(), self.episode_starts[index].flatten(),
                self.timesteps[index].flatten(), self.task_weights[index].flatten(),
                np.full(len(index), float(self.policy_age), dtype=np.float32))
        return ML3RolloutBufferSamples(*map(self.to_torch, data))


def _normalized(weights: np.ndarray, valid: np.ndarray, normalize: bool, centre: bool) -> np.ndarray:
    """Weights with their valid entries centred (``centre``) and scaled to unit std (``normalize``); others 0."""
    out = np.where(valid, weights, 0.0)
    values = out[valid]
    if normalize and values.size > 1:
        if centre:
            out = out - values.mean()
            values = out[valid]
        out = out / (values.std(ddof=1) + 1e-8)
    return np.where(valid, out, 0.0).astype(np.float32)


__all__ = ["MAX_INVALID_IN_ROW", "ML3RolloutBuffer", "ML3RolloutBufferSamples", "NonFiniteRewardError"]
