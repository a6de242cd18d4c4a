"""ML3: model-free Meta-Learning via Learned Loss as a Stable-Baselines3 on-policy algorithm.

The policy pi_theta is a diagonal Gaussian. Its only update is plain SGD on a learned loss
(paper Eq. 2, Sec. III.B.2; ``inner_optimizer="adam"`` takes Adam steps instead)::

    theta' = theta - alpha * grad_theta  mean_{minibatch} M_phi(s, a, mu_theta(s), sigma_theta, g)

where (s, a) come from the rollout buffer as constants, mu_theta and sigma_theta are recomputed from
theta, and g is the goal read from the observation (the env's ``goal_slice``).

**Meta-test** (Algorithm 5, ``meta_train=False``): phi is frozen; every ``train()`` runs ``n_epochs``
passes of SGD over minibatches of the rollout, exactly like PPO's loop but on M_phi.

**Meta-train** (Algorithm 4, ``meta_train=True``) maps onto SB3's collect/train cycle: each ``train()``
takes the outer step of the previous inner update on the new rollout, then the inner step on it
(``updates.py`` says how), and every ``policy_reset_interval`` iterations a fresh actor.

The critic (value head) is trained by regression on the GAE returns with its own Adam optimizer; it
only provides the advantages of the task loss (and optional meta-loss inputs), so a meta-test whose
loss reads no advantage or return skips it.

The parts live beside this file: the rollout buffer and its guard against non-finite rewards
(``buffers.py``), the meta-loss inputs (``meta_inputs.py``), the task losses L_T and their networks
(``task_losses.py``), argument checks (``checks.py``), the meta-loss's file and metadata
(``loss_files.py``) and the model's file, which never runs code when loaded (``persistence.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_ml3.functional import (SGD, Adam, InnerOptimizer, Params, make_meta_optimizer)
from sb3_ml3.meta_loss import InputSpec, MetaLoss
from sb3_ml3.ml3.buffers import ML3RolloutBuffer
from sb3_ml3.ml3.loss_files import (build_meta_loss, env_for_loss, resolve_meta_loss, settings_from_loss, sync_observation_normalization)
from sb3_ml3.ml3.checks import (UntrainedMetaLossWarning, check_arguments, made_space,
                                refuse_dict_observations)
from sb3_ml3.ml3.inner_step import COMPILE_FROM_STEPS
from sb3_ml3.ml3.updates import LearnedLossUpdates
from sb3_ml3.ml3.task_frame import setup_task_frame
from sb3_ml3.ml3.task_losses import ImitationTaskLoss, TaskCritic, TaskLoss, make_task_loss
from sb3_ml3.ml3.meta_inputs import DEFAULT_META_INPUTS, OPTIONAL_META_INPUTS, MetaInputs, env_goal_slice
from sb3_ml3.ml3.persistence import ModelFiles
from sb3_ml3.ml3.policies import ML3Policy
from sb3_ml3.traced import InnerTrace

SelfML3 = TypeVar("SelfML3", bound="ML3")

#: A new meta-loss is a quadratic form in the policy mean around a learned target,
#: M = sum_j softplus(w_j(c)) (mu_j - t_j(c))^2 with (t, w) an MLP (two layers of 40) of the other
#: inputs c. It is bounded below, so the inner steps cannot run the policy off to the action bounds,
#: which the plain-MLP loss of the paper did in our runs (BENCHMARKS.md, "Model-free ML3").
DEFAULT_META_LOSS_KWARGS: dict[str, Any] = {"hidden_sizes": (40, 40), "quadratic": ("mean",)}

class ML3(LearnedLossUpdates, ModelFiles, OnPolicyAlgorithm):
    """Meta-Learning via Learned Loss for model-free RL (Bechtle et al., Algorithms 4 and 5).

    Arguments marked *(from the loss)* are left open by default (``None``; ``"auto"`` for ``max_grad_norm``):
    they then take the value the meta-loss file records, since a learned loss is meta-trained for one inner
    update, and the value in brackets without a file. With no ``meta_loss``, ``meta_loss_kwargs`` or
    ``meta_inputs`` and ``meta_train=False``, the loss is the zoo's for the env (:mod:`sb3_ml3.zoo`), and an env given by its id is
    made as that loss was meta-trained (its number of envs; ``VecNormalize`` if it saw normalised observations).

    :param policy: ``"MlpPolicy"`` (an :class:`~sb3_ml3.ml3.policies.ML3Policy`) or a subclass of it.
    :param env: the environment or its registered id (e.g. ``"ReacherGoal-v0"``).
    :param learning_rate: the inner step size alpha of the step on the meta-loss (or a schedule); *(from the
        loss)* [3e-2]. A target loss's ``pull_learning_rate`` replaces it for a policy's pulled updates.
    :param n_steps: steps per environment per rollout; *(from the loss)* [128].
    :param batch_size: minibatch size of the inner steps; *(from the loss)* [128].
    :param n_epochs: passes over each rollout for the inner steps; *(from the loss)* [1].
    :param gamma: discount factor; *(from the loss)* [0.99].
    :param gae_lambda: GAE lambda for the advantages of the task loss; *(from the loss)* [0.95].
    :param meta_loss: ``None`` (the zoo's loss for the env at meta-test, else a new meta-loss for
        ``meta_inputs``), a :class:`MetaLoss`, or the path of a saved one. A loaded meta-loss must fit this
        env's spaces and ``meta_inputs``.
    :param meta_train: whether ``learn()`` also trains phi (Algorithm 4) or only uses it (Algorithm 5).
    :param meta_lr: the outer step size eta (Adam).
    :param meta_inputs: the fields the meta-loss reads, from :data:`DEFAULT_META_INPUTS` and
        :data:`OPTIONAL_META_INPUTS`; *(from the loss)* [:data:`DEFAULT_META_INPUTS`].
    :param meta_loss_kwargs: arguments of a new :class:`MetaLoss` (``hidden_sizes``, ``output``,
        ``quadratic``, ...); default :data:`DEFAULT_META_LOSS_KWARGS`. ``{}`` gives the paper's plain MLP.
    :param task_loss: the weight of the REINFORCE task loss: ``"advantage"`` or ``"return"``; *(from the
        loss)* ["advantage"].
    :param task_reward: ``None`` (the env's reward), or the key of a per-step value in the env's
        ``info`` (e.g. AntGoal's ``"progress"``, the per-step term of its task metric) that replaces the
        reward in the task loss while meta-training: extra information that only meta-training reads
        (the paper's loss shaping, Sec. III.C). Its weights are centred discounted rewards-to-go within
        each rollout (baseline: the mean over envs at the same step). The policy's ``advantage`` meta-input
        and the critic still come from the env's reward, so meta-test needs no such information.
    :param task_critic: with ``task_reward``, learn a value function of that reward (its own MLP and
        Adam optimizer, meta-training only) and weigh the task loss by its GAE advantages instead of the
        rewards-to-go: a per-state baseline instead of the mean over envs at the same step.
    :param task_objective: ``"reinforce"``: the task loss is Eq. 7-8's score-function surrogate, weighted
        as above. ``"q_value"`` (needs ``task_critic``): L_T(theta) = -mean_s Q_task(s, mu_theta(s)), with
        Q_task an action-value of ``task_reward`` (an MLP of state and action, fitted to the task critic's
        lambda-returns of the sampled actions). The outer step then differentiates through Q_task's action
        gradient (DDPG's pathwise estimator) instead of a REINFORCE estimate: the model-free analogue of the
        paper's model-based task loss, which is differentiable through a learned dynamics model.
        ``"imitation"`` (needs ``expert``): the paper's behavioural-cloning task loss (Sec. IV.C.4),
        L_T(theta) = mean_s ||mu_theta(s) - a_E(s)||^2 with a_E the expert's deterministic action at the
        rollout's states (those of the updated policy, as in DAgger), both clipped to the action bounds.
        The expert shapes the loss at meta-train time only; meta-test never reads it.
    :param expert: the expert of ``task_objective="imitation"``: an SB3 model or policy with this env's
        spaces, or the path of a saved SB3 PPO model (kept as a path when the model is saved).
    :param task_critic_epochs: passes over each rollout when fitting the task critics (``None``: ``n_epochs``).
    :param meta_epochs: outer steps (Adam steps on phi) per rollout, each recomputing the inner update;
        more than one needs ``task_clip_range``. The first reuses the live update's trace; each later one
        reruns the update at the new phi to trace it (``retrace``; ReacherGoal with PPO's 320 minibatch steps,
        one thread: 0.6 s per extra epoch against 0.8 s for a whole meta-train iteration with one).
    :param task_clip_range: ``None``: the task loss is Eq. 7-8's REINFORCE. A float eps: PPO's clipped
        surrogate -mean[min(r w, clip(r, 1-eps, 1+eps) w)] with r = pi_{theta_i(phi)}(a|s) / pi_old(a|s)
        the ratio to the policy that collected the rollout: its gradient at phi's first outer step is
        REINFORCE's, and the clip keeps later outer steps on the same rollout from trusting it too far.
    :param task_ent_coef: entropy bonus in the task loss (lets phi learn to keep exploring).
    :param policy_reset_interval: re-initialise the actor every this many iterations while
        meta-training (Algorithm 4's theta_0), so the loss learns to train fresh policies, and sees
        them up to that age; ``None`` never resets. Unused at meta-test.
    :param first_order: first-order meta-gradient through several inner minibatch steps.
    :param max_grad_norm: clip each inner step's gradient to this global norm (``None``: plain SGD, the
        paper's Eq. 2). Part of the update the loss is meta-trained through, so it applies in both phases;
        *(from the loss)* [1.0].
    :param meta_max_grad_norm: clip the meta-gradient's norm (``None``: no clipping).
    :param max_policy_updates: at meta-test, stop updating the policy after this many updates (it keeps
        acting and collecting). A loss meta-trained with ``policy_reset_interval=N`` has only seen
        policies up to N updates old; past that horizon it is extrapolating (the short-horizon bias),
        and in our runs it then slowly degraded the policy. ``None``: update until ``learn()`` ends.
    :param inner_optimizer: the inner step rule: ``"sgd"`` (the paper's, Eq. 2) or ``"adam"`` (PyTorch's Adam
        with SB3's ``eps=1e-5``), e.g. for a meta-loss in PPO's family (``meta_loss_kwargs={"surrogate": "ppo"}``)
        that then starts from PPO's own update. The outer step differentiates the same rule; *(from the loss)*
        ["sgd"].
    :param vf_learning_rate: Adam step size of the critic (with ``vf_coef=None``).
    :param normalize_advantage: *(from the loss, ``"auto"``)* [True] normalise the task-loss weights (the ``advantage`` input) per rollout (``True``
        or ``"rollout"``), per minibatch of the inner steps as SB3's PPO does (``"minibatch"``; the task loss's
        weights are then normalised per rollout), or not at all (``False``).
    :param vf_coef: *(from the loss, ``"auto"``)* [None] ``None``: the critic is regressed on the GAE returns after the actor's inner steps, with its
        own Adam at ``vf_learning_rate``. A float: PPO's joint update, the critic learns in the same minibatch
        steps as the actor on ``vf_coef`` x its MSE, with the inner optimizer's rule and step size, and actor and
        critic share the gradient clip at ``max_grad_norm`` (their global norm, as PPO's
        ``clip_grad_norm_`` over the whole policy). With ``normalize_advantage="minibatch"``, PPO's settings and
        a surrogate-family loss at zero correction, an update is SB3 PPO's, step for step. The outer step keeps
        each minibatch's clip factor as a constant (its dependence on phi through the norm is dropped).
    :param compile_inner_step: run each inner step's losses and their backward pass through ``torch.compile``
        (fused kernels; silently eager where compiling fails). About 16 s of compiling on the first update of
        a process (less from inductor's disk cache), then a cheaper inner step (about 0.2 s per ReacherGoal
        update; BENCHMARKS.md). ``"auto"``: for a ``learn`` call of ``COMPILE_FROM_STEPS`` (200k) steps or more.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": ML3Policy}
    policy: ML3Policy

    def __init__(
        self,
        policy: str | type[ML3Policy],
        env: GymEnv | str,
        learning_rate: float | Schedule | None = None,
        n_steps: int | None = None,
        batch_size: int | None = None,
        n_epochs: int | None = None,
        gamma: float | None = None,
        gae_lambda: float | None = None,
        meta_loss: MetaLoss | str | os.PathLike | None = None,
        meta_train: bool = False,
        meta_lr: float = 3e-3,
        meta_inputs: Sequence[str] | None = None,
        meta_loss_kwargs: dict[str, Any] | None = None,
        task_loss: str | None = None,
        task_reward: str | None = None,
        task_critic: bool = False,
        task_objective: str = "reinforce",
        task_critic_epochs: int | None = None,
        expert: BaseAlgorithm | BasePolicy | str | os.PathLike | None = None,
        meta_epochs: int = 1,
        task_clip_range: float | None = None,
        task_ent_coef: float = 0.0,
        policy_reset_interval: int | None = 25,
        first_order: bool = True,
        max_grad_norm: float | str | None = "auto",
        meta_max_grad_norm: float | None = 1.0,
        max_policy_updates: int | None = None,
        vf_learning_rate: float = 1e-3,
        inner_optimizer: str | None = None,
        normalize_advantage: bool | str = "auto",
        vf_coef: float | str | None = "auto",
        compile_inner_step: bool | str = "auto",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        refuse_dict_observations(env)
        meta_loss, recorded = resolve_meta_loss(meta_loss, env, meta_train, meta_loss_kwargs, meta_inputs)
        settings = settings_from_loss(dict(
            learning_rate=learning_rate, n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs, gamma=gamma,
            gae_lambda=gae_lambda, meta_inputs=meta_inputs, inner_optimizer=inner_optimizer,
            max_grad_norm=max_grad_norm, task_loss=task_loss, vf_coef=vf_coef,
            normalize_advantage=normalize_advantage), recorded)
        max_grad_norm = settings["max_grad_norm"]
        env = env_for_loss(env, recorded)
        try:
            super().__init__(
                policy,
                env,
                learning_rate=settings["learning_rate"],
                n_steps=settings["n_steps"],
                gamma=settings["gamma"],
                gae_lambda=settings["gae_lambda"],
                ent_coef=0.0,
                vf_coef=0.0,
                max_grad_norm=float("inf") if max_grad_norm is None else max_grad_norm,
                use_sde=False,
                sde_sample_freq=-1,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                policy_kwargs=policy_kwargs,
                verbose=verbose,
                seed=seed,
                device=device,
                rollout_buffer_class=ML3RolloutBuffer,
                _init_setup_model=False,
            )
        except ValueError as error:  # an env id whose env has Dict observations: SB3 made it and refused it
            if "MultiInputPolicy" in str(error):
                refuse_dict_observations(made_space(env))
            raise
        if getattr(self, "action_space", None) is not None and not isinstance(self.action_space, spaces.Box):
            raise ValueError(
                f"ML3 needs a continuous Box action space (its meta-loss reads the Gaussian policy's mean and std), "
                f"got {self.action_space}. Use PPO or A2C for discrete actions."
            )
        self.batch_size = settings["batch_size"]
        self.n_epochs = settings["n_epochs"]
        self.max_grad_norm = max_grad_norm
        self.meta_train = meta_train
        self.meta_lr = meta_lr
        self.meta_inputs = tuple(settings["meta_inputs"])
        self.meta_loss_kwargs = dict(DEFAULT_META_LOSS_KWARGS if meta_loss_kwargs is None else meta_loss_kwargs)
        self.task_loss = settings["task_loss"]
        self.task_reward = task_reward
        self.task_critic = task_critic
        self.task_objective = task_objective
        self.task_critic_epochs = task_critic_epochs
        self.expert = expert
        self.meta_epochs = meta_epochs
        self.task_clip_range = task_clip_range
        self.task_ent_coef = task_ent_coef
        self.policy_reset_interval = policy_reset_interval
        self.first_order = first_order
        self.meta_max_grad_norm = meta_max_grad_norm
        self.max_policy_updates = max_policy_updates
        self._n_policy_updates = 0
        self._actor_age = 0  # inner updates since the actor was initialised or reset: the "policy_age" input
        self.vf_learning_rate = vf_learning_rate
        self.inner_optimizer = settings["inner_optimizer"]
        self.normalize_advantage = settings["normalize_advantage"]
        self.vf_coef = settings["vf_coef"]
        self.compile_inner_step = compile_inner_step
        self._meta_loss_source = meta_loss
        self._meta_loss_config: dict[str, Any] | None = None
        self.goal_slice: slice | None = None
        #: width of the env's task-frame features (the ``task_frame`` meta-input), None if not read
        self.task_frame_dim: int | None = None
        self._n_meta_updates = 0
        self._n_iterations = 0
        self.skipped_meta_steps = 0
        self.skipped_inner_steps = 0
        check_arguments(self)
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ set-up
    def _setup_model(self) -> None:
        env_id = self.env_id
        self._task_frame = setup_task_frame(self, env_id or "the env")
        self.rollout_buffer_kwargs = {**self.rollout_buffer_kwargs, "env_name": env_id or "the env",
                                      "task_frame_dim": self.task_frame_dim or 0}
        super()._setup_model()
        self.policy.env_name = env_id or "the env"
        # the live optimizer and the pure rule the outer step recomputes come from one object
        self.inner_rule: InnerOptimizer = Adam(eps=1e-5) if self.inner_optimizer == "adam" else SGD()
        self.policy.optimizer = self.inner_rule.torch_optimizer(list(self.policy.actor_parameters().values()),
                                                                self.lr_schedule(1))
        if self.vf_coef is None:
            self.value_optimizer = torch.optim.Adam(self.policy.critic_parameters(), lr=self.vf_learning_rate,
                                                    foreach=True)
        else:  # PPO's joint update: the critic takes the actor's steps (rule, step size, schedule)
            self.value_optimizer = self.inner_rule.torch_optimizer(self.policy.critic_parameters(),
                                                                   self.lr_schedule(1))
        #: V_task of ``task_reward`` (``task_critic=True``), and the task loss L_T of ``task_objective``
        self.task_value: TaskCritic | None = TaskCritic(self) if self.task_critic else None
        self.objective: TaskLoss = make_task_loss(self)
        if self.env is not None:
            self.goal_slice = env_goal_slice(self.env, self.meta_inputs, self.observation_space)
        self.inputs = MetaInputs(self.meta_inputs, self.observation_space, self.action_space, self.goal_slice,
                                 self.device, task_frame_dim=self.task_frame_dim)
        self.meta_loss = build_meta_loss(self, self.inputs.spec).to(self.device)
        sync_observation_normalization(self)
        self.meta_loss.requires_grad_(self.meta_train)
        self.meta_optimizer = make_meta_optimizer(self.meta_loss.parameters(), self.meta_lr) if self.meta_train else None
        self._pending: tuple[Params, list[dict[str, torch.Tensor]], float, Any] | None = None
        self._trace: InnerTrace | None = None  # what the pending update recorded for its outer step
        #: reuse the live inner update's points and gradients in the (first-order) outer step; turned off, with a
        #: warning, if that ever fails, and then the update is recomputed as the exact path does
        self.traced_outer_step = True
        self._compiling = self.compile_inner_step is True  # decided again by each learn() call
        # last: loading a saved expert builds (and randomly initialises) a PPO policy, which must not
        # shift the random initialisation of this model's own networks
        if self.expert is not None and self.meta_train and not isinstance(self.expert, _UnsavedExpert):
            assert isinstance(self.objective, ImitationTaskLoss)
            self.objective.expert = self.objective.load_expert(self.expert)

    def meta_input_spec(self) -> InputSpec:
        """The meta-loss inputs this setting provides, with their widths."""
        return self.inputs.spec

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        """SB3 calls this after every env step of a rollout, before adding the step: stage ``task_reward`` and the
        task-frame features of the step."""
        super()._update_info_buffer(infos, dones)
        if self._task_frame is not None:
            self._task_frame.stage(self)
        if self.task_reward is not None and self.meta_train:
            missing = [i for i, info in enumerate(infos) if self.task_reward not in info]
            if missing:
                raise KeyError(
                    f"task_reward={self.task_reward!r}, but the info of env {missing[0]} has no such key "
                    f"(keys: {sorted(infos[missing[0]])}); pick one the env reports, or task_reward=None."
                )
            self.rollout_buffer.stage_task_reward(np.array([float(info[self.task_reward]) for info in infos]))

    def train(self) -> None:
        """One ML3 update on the last rollout: outer step (meta-train), inner step, critic regression.

        The three halves are public so that a driver can run them apart (:mod:`sb3_ml3.distributed` averages
        several models' :meth:`outer_gradient` before any of them takes its inner step):
        :meth:`prepare_rollout`, then :meth:`outer_step` (meta-train, with an inner update pending), then
        :meth:`inner_update`.
        """
        data = self.prepare_rollout()
        if data is None:
            return
        stats: dict[str, float] = {}
        if self.meta_train and self._pending is not None:
            stats.update(self.outer_step(data))
        self.inner_update(data, stats)

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        """SB3's set-up of a ``learn`` call (also the Ray workers'), deciding ``compile_inner_step="auto"`` for it."""
        self._compiling = self.compile_inner_step is True or (
            self.compile_inner_step == "auto" and total_timesteps >= COMPILE_FROM_STEPS)
        out = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self._task_frame is None and self.task_frame_dim is not None:  # an env given later, by set_env
            self._task_frame = setup_task_frame(self, self.env_id or "the env")
        if self._task_frame is not None:
            self._task_frame.start(self)
        return out

    def learn(
        self: SelfML3,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "ML3",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfML3:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


class _UnsavedExpert:
    """Stands for an expert object that a model file could not hold: ``train`` asks for it again."""


__all__ = ["ML3", "DEFAULT_META_INPUTS", "OPTIONAL_META_INPUTS", "UntrainedMetaLossWarning"]
