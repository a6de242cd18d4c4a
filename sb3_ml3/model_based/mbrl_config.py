"""The settings of ``ml3 mbrl`` (:class:`MBRLConfig`): one dataclass, checked on construction, saved with every result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: where the task-loss baseline's learned model comes from (MBRLConfig.task_model_from)
TASK_MODEL_FROM = ("kept", "restarts")
#: the meta-loss's learned per-step weights (MBRLConfig.loss_time_weights): none, or where they start
LOSS_TIME_WEIGHTS = ("none", "uniform", "late")
#: what of a trajectory's outcome the meta-loss reads (MBRLConfig.loss_outcome; mbrl_envs.final_error_features)
LOSS_OUTCOMES = ("none", "final-error")


@dataclass
class MBRLConfig:
    """Settings of ``ml3 mbrl`` (the paper gives Algorithm 3, the model refresh every 100 iterations; the rest is ours).

    A setting added later must default to the behaviour from before it existed: ``--resume`` (:mod:`.mbrl_store`)
    reads a stored seed that lacks the key as having run with the default."""

    horizon: int | None = None  # unroll and rollout length (None: the env's default, mbrl_envs)
    n_outer: int = 300  # outer iterations (meta-train)
    batch_goals: int = 8  # train goals (one fresh policy each) per outer iteration
    inner_steps: int = 3  # K inner steps per outer iteration
    meta_lr: float = 1e-3  # eta (Adam)
    meta_max_grad_norm: float = 1.0
    model_every: int = 100  # outer iterations between real rollouts of the latest policies + model refits
    random_episodes: int = 200  # random-action episodes P is first fitted on
    # each random episode's torques are scaled by u ~ U(random_amplitude_min, 1) (1.0: full-range torques only)
    random_amplitude_min: float = 1.0
    # outer iterations a batch of policies (and its goals) lives: 1 = fresh policies every iteration (Alg. 3 as
    # written); n > 1 keeps updating them with M_phi for n iterations, so the loss also learns where it leads late
    policy_reset_every: int = 1
    relative_target: bool = False  # M's target: the recorded action plus a learned change (mbrl_nets.LossAndRate)
    # M reads the policy's pre-tanh output: its gradient survives saturated actions (a loss on the action drives a
    # tanh policy to +-1, where every gradient vanishes and the policy stays: the reacher's failure, REPORT.md)
    loss_on_pre_tanh: bool = False
    # meta-train's task loss: the mean distance over the unroll's last n states (1: the final distance, Alg. 3's;
    # more is a denser, smoother signal; meta-test and every baseline are always scored by the final distance)
    task_loss_steps: int = 1
    # meta-train's task loss also adds this times the final distance of M_phi's minimiser t(c) unrolled as a controller
    # in P (mbrl_nets.LossAndRate.minimiser: where many inner steps lead); 0: none, Alg. 3 as written. Never scored
    minimiser_weight: float = 0.0
    # meta-train's task loss also adds this times |velocity at s_H| (state[2:4]: the point's, the joints' in rad/s);
    # 0: none. Shapes meta-training away from the reacher's fold-and-spin optimum (REPORT.md); never scored
    final_speed_weight: float = 0.0
    # "fresh": new policies every reset (above) and at meta-test; "fixed": one draw per seed that every meta-train
    # batch, every baseline and every meta-test starts from (the authors' protocol: their policy.reset() reloads
    # one saved initialisation)
    policy_init: str = "fresh"
    # "quadratic": M = mean_t sum_j w_j(c_t) (a_t,j - t_j(c_t))^2; "free": an ELU MLP of (c_t, a_t), the authors' form
    loss_form: str = "quadratic"
    # the inner step (mbrl_inner): "sgd" (the paper's, step alpha) or "adam" (a differentiable Adam whose step size is
    # alpha: set alpha_max / alpha_init in Adam's units, e.g. 0.1 / 0.02), with Adam's eps
    inner_optimizer: str = "sgd"
    adam_eps: float = 1e-2
    target_bound: float | None = None  # the quadratic form's target t = b tanh(.), inside the action box for b < 1
    # M weighs each step of a trajectory by a learned positive weight of its time index (mbrl_nets.LossAndRate:
    # time_steps), starting "uniform" (all 1) or "late" (a ramp from 0.1 to 1.9); "none": the plain mean over steps
    loss_time_weights: str = "none"
    # the outer (Adam) step size of those weights' logs; None: meta_lr. Adam moves each log weight by about its step
    # size per outer iteration, so at meta_lr 1e-3 a weight can change at most ~e-fold in 1,000 iterations
    time_weight_lr: float | None = None
    # what of the trajectory's outcome M_phi also reads at every step: "none", or "final-error" (where the recorded
    # trajectory ended relative to the goal, mbrl_envs.final_error_features): real feedback the loss may act on at
    # meta-test, e.g. a target that leans against the last rollout's miss, a rate that shrinks as it closes
    loss_outcome: str = "none"
    # what M_phi reads besides the actions: "state" (the policy's features) or "arm-frame" (ReacherGoal4D: the arm's
    # own frame, mbrl_envs.reacher_arm_frame; the policies read policy_features)
    loss_features: str = "state"
    # what the policies read: "state" (the env's features, mbrl_envs) or one of LOSS_FEATURES (ReacherGoal4D:
    # "arm-frame"); the same policy class for ML3, every baseline and the validation
    policy_features: str = "state"
    # meta-validation (mbrl_validation): every val_every outer iterations score the loss by val_updates real updates
    # on train goals and keep the best (0: off, the last weights, Alg. 3 as written)
    val_every: int = 0
    val_updates: int = 20
    # train goals each validation score averages over (0: n_test_goals); more goals make the choice among checkpoints
    # and restarts less noisy, at the cost of more real rollouts per score
    val_goals: int = 0
    # independent meta-trainings per seed (their own draws of M_phi, P and the policies; the same data seeds and
    # held-out goals); the one with the best validation score on train goals is kept (needs val_every > 0)
    meta_restarts: int = 1
    model_epochs: int = 60  # epochs of the first fit (a refit: a third of it)
    model_hidden: tuple[int, ...] = (64, 64)
    model_members: int = 3
    policy_hidden: tuple[int, ...] = (32, 32)
    meta_hidden: tuple[int, ...] = (64, 64)
    alpha_max: float = 10.0
    alpha_init: float = 1.0
    test_updates: int = 60  # policy updates at meta-test
    n_test_goals: int = 10
    # (optimizer, step size) pairs tried for the task-loss baselines, tuned on train goals
    task_grid: tuple[tuple[str, float], ...] = (("adam", 0.0003), ("adam", 0.001), ("adam", 0.003), ("adam", 0.01),
                                                ("adam", 0.03), ("sgd", 0.003), ("sgd", 0.01), ("sgd", 0.03))
    # the policy classes the task-loss baselines may choose from, on train goals with the step size (mbrl_baselines):
    # e.g. ("state", "arm-frame"); empty: ML3's own class only
    task_policy_features: tuple[str, ...] = ()
    # which learned model P the task loss through the model uses: "kept" (the kept restart's, whose P moves with the
    # restart ML3's validation keeps) or "restarts" (every restart's P, the best on train goals with the grid above)
    task_model_from: str = "kept"
    # also run the task loss through P along each update's real rollout (mbrl.unroll's anchor: real states,
    # P's derivatives), tuned the same way: the baseline with the real feedback a loss reading the outcome gets
    real_state_baseline: bool = False
    eval_seed: int = 12345  # reset seeds of the real rollouts: eval_seed + goal index
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.val_every < 0:
            raise ValueError(f"val_every must be 0 (off) or a number of outer iterations, got {self.val_every} "
                             "(--val-every).")
        if self.minimiser_weight < 0 or (self.minimiser_weight > 0 and (self.loss_form != "quadratic"
                                                                         or self.relative_target)):
            raise ValueError(f"minimiser_weight ({self.minimiser_weight}) must be >= 0, and above 0 it needs the "
                             "quadratic loss form with an absolute target (no --relative-target, --loss-form quadratic).")
        if self.val_goals < 0:
            raise ValueError(f"val_goals must be 0 (as many as n_test_goals) or a number of train goals, got "
                             f"{self.val_goals} (--val-goals).")
        if self.loss_time_weights not in LOSS_TIME_WEIGHTS:
            raise ValueError(f"loss_time_weights must be one of {list(LOSS_TIME_WEIGHTS)}, got "
                             f"{self.loss_time_weights!r} (--loss-time-weights).")
        if self.time_weight_lr is not None and (not self.time_weight_lr > 0 or self.loss_time_weights == "none"):
            raise ValueError(f"time_weight_lr ({self.time_weight_lr}) must be a positive step size, and it needs "
                             "learned per-step weights (--loss-time-weights uniform or late).")
        if self.loss_outcome not in LOSS_OUTCOMES:
            raise ValueError(f"loss_outcome must be one of {list(LOSS_OUTCOMES)}, got {self.loss_outcome!r} "
                             "(--loss-outcome).")
        if self.task_model_from not in TASK_MODEL_FROM:
            raise ValueError(f"task_model_from must be one of {list(TASK_MODEL_FROM)}, got {self.task_model_from!r} "
                             "(--task-model-from).")
        if self.meta_restarts < 1 or (self.meta_restarts > 1 and self.val_every < 1):
            raise ValueError(f"meta_restarts ({self.meta_restarts}) must be at least 1, and above 1 it needs "
                             "meta-validation to choose among the restarts: set val_every (e.g. --val-every 100).")


def config_dict(config: MBRLConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def config_from_dict(saved: dict[str, Any]) -> MBRLConfig:
    """The :class:`MBRLConfig` a saved ``config_dict`` describes (JSON's lists back to tuples), checked as on
    construction. A key MBRLConfig does not know is refused (a newer or foreign file); a missing one is its default."""
    if not isinstance(saved, dict):
        raise ValueError(f"an ml3 mbrl config is a JSON object, got {type(saved).__name__}.")
    unknown = sorted(set(saved) - {f.name for f in fields(MBRLConfig)})
    if unknown:
        raise ValueError(f"unknown ml3 mbrl settings {unknown}: the file was written by another version of sb3-ml3.")

    def as_tuple(value: Any) -> Any:
        return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

    tuple_fields = {name for name, default in asdict(MBRLConfig()).items() if isinstance(default, tuple)}
    return MBRLConfig(**{k: (as_tuple(v) if k in tuple_fields else v) for k, v in saved.items()})


__all__ = ["MBRLConfig", "LOSS_OUTCOMES", "LOSS_TIME_WEIGHTS", "TASK_MODEL_FROM", "config_dict", "config_from_dict"]
