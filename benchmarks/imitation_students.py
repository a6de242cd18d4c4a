"""How far do students get towards an expert: plain behavioural cloning vs a learned (imitation-shaped) loss.

    python benchmarks/imitation_students.py AntGoal-v0 --expert experts/ant_ppo_train_seed0.zip \\
        [--checkpoint probes/i2/checkpoint.zip] [--learning-rate 0.1] [--updates 1 2 5 10 20 40]

Two measurements on the train-split goals, both with a fresh [64, 64] policy (seed 5):

* **plain BC** (always): one rollout of the fresh policy (8 envs x 200 steps), then SGD on the task
  loss of ``task_objective="imitation"`` itself, ||clip(mu(s)) - a_E(s)||^2, with the inner step's norm-1
  clipping, minibatches of 400; the squared error after 40, 400 and 2,000 steps, and the task metric
  (deterministic, 10 train goals) after 400 and 2,000. What a loss that trains as fast as BC could give;
* **a learned loss** (``--checkpoint``: a probe's ML3 checkpoint): a fresh policy trained by it at
  meta-test (the recipe's meta-test settings, ``--learning-rate``, no freezing); the squared error
  to the expert's actions at the student's own rollout states and the task metric after each of
  ``--updates`` updates. For a loss quadratic in the policy mean (``quadratic=["mean"]``) also the
  error of its *target* t(c) (clipped to the action bounds) at the same states: the point the learned
  loss pulls the mean to, so the error a student of that loss cannot get below.

The expert's task metric is printed on the train goals and, for scale, on the held-out goals of
``ml3 compare`` (whose 80% threshold a student would have to reach there).
"""

from __future__ import annotations

import argparse
import copy

import torch
from stable_baselines3 import PPO

from sb3_ml3.experiments import EVAL_SEED, TASK_SEED, make_train_env, policy_kwargs_for, settings_for
from sb3_ml3.envs import sample_tasks
from sb3_ml3.evaluation import evaluate_task_metric
from sb3_ml3.functional import clip_grads
from sb3_ml3.ml3 import ML3
from sb3_ml3.ml3.task_losses import ImitationTaskLoss

STUDENT_SEED = 5


def _error(model: ML3, expert: ML3, observations: torch.Tensor) -> float:
    """The imitation task loss of ``model``'s policy against ``expert``'s expert at ``observations``."""
    with torch.no_grad():
        return float(ImitationTaskLoss(model, None).loss(None, {"observations": observations,
                                                      "expert_actions": expert.expert_actions(observations)}))


def _target_error(student: ML3, expert: ML3, data: dict[str, torch.Tensor]) -> str:
    """``", target error X"``: the squared error of the student's learned-loss target for its policy mean at
    the states of ``data`` (``student.rollout_tensors()``: every input as the inner step feeds it), if that
    loss is quadratic in exactly the mean (else ``""``)."""
    if student.meta_loss.quadratic != ("mean",):
        return ""
    with torch.no_grad():
        _, target, _ = student.meta_loss.quadratic_form(student.meta_loss_fields(None, data))
        error = ((student.clip_actions(target) - expert.expert_actions(data["observations"])) ** 2).sum(-1).mean()
    return f", target error {float(error):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id")
    parser.add_argument("--expert", required=True, help="a saved SB3 PPO model (benchmarks/train_expert.py)")
    parser.add_argument("--checkpoint", default=None, help="an ML3 checkpoint whose meta-loss trains the student")
    parser.add_argument("--learning-rate", type=float, default=0.1, help="inner step size of both students")
    parser.add_argument("--n-epochs", type=int, default=None, help="SGD passes per update of the learned loss's student")
    parser.add_argument("--updates", type=int, nargs="+", default=[1, 2, 5, 10, 20, 40])
    args = parser.parse_args()
    torch.set_num_threads(1)

    settings = settings_for("ml3", args.env_id)
    n_envs, goals = settings["n_envs"], sample_tasks(args.env_id, 10, "train", seed=0)

    def env():
        return make_train_env(args.env_id, n_envs, STUDENT_SEED, split="train")

    # the expert's actions, through the imitation task loss's own code path
    teacher = ML3("MlpPolicy", env(), meta_train=True, task_objective="imitation", expert=args.expert,
                  n_steps=settings["meta_test"]["n_steps"], batch_size=settings["meta_test"]["batch_size"])
    expert_model = PPO.load(args.expert)
    expert_metric = evaluate_task_metric(expert_model, args.env_id, goals, seed=EVAL_SEED).mean()
    held_out = sample_tasks(args.env_id, 10, "test", seed=TASK_SEED)
    held_out_metric = evaluate_task_metric(expert_model, args.env_id, held_out, seed=EVAL_SEED).mean()
    print(f"expert: task metric on the train goals {expert_metric:.1f}, on ml3 compare's held-out goals "
          f"{held_out_metric:.1f}", flush=True)

    test_settings = dict(settings["meta_test"], learning_rate=args.learning_rate, max_policy_updates=None)
    bc = ML3("MlpPolicy", env(), seed=STUDENT_SEED, policy_kwargs=policy_kwargs_for([64, 64]), **test_settings)
    fresh = {name: p.detach().clone() for name, p in bc.policy.actor_parameters().items()}
    bc.learn(test_settings["n_steps"] * n_envs)  # one rollout of the fresh policy (its ML3 update is undone)
    # the rollout's states in the buffer's (step, env) order, which the minibatch indices below draw from
    observations = torch.as_tensor(bc.rollout_buffer.observations.reshape(-1, bc.observation_space.shape[0]))
    bc.policy.load_actor_parameters(fresh)
    params = bc.policy.actor_parameters()
    generator = torch.Generator().manual_seed(0)
    done = 0
    print(f"plain BC: error {_error(bc, teacher, observations):.3f} at 0 steps (fresh policy)", flush=True)
    for steps in (40, 400, 2000):
        for _ in range(steps - done):
            index = torch.randint(0, observations.shape[0], (test_settings["batch_size"],), generator=generator)
            batch = {"observations": observations[index], "expert_actions": teacher.expert_actions(observations[index])}
            loss = ImitationTaskLoss(bc, None).loss(None, batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)  # log_std: unused
            grads = {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}
            with torch.no_grad():  # the inner step's SGD with its norm-1 clipping (ML3.inner_step)
                for name, g in clip_grads(grads, test_settings["max_grad_norm"]).items():
                    params[name].sub_(args.learning_rate * g)
        done = steps
        metric = "" if steps < 400 else f", task metric {evaluate_task_metric(bc, args.env_id, goals, seed=EVAL_SEED).mean():.1f}"
        print(f"plain BC: error {_error(bc, teacher, observations):.3f} after {steps} steps{metric}", flush=True)

    if args.checkpoint is None:
        return
    meta = ML3.load(args.checkpoint, env=env(), expert=args.expert)
    student = ML3("MlpPolicy", env(), meta_loss=copy.deepcopy(meta.meta_loss), seed=STUDENT_SEED,
                  policy_kwargs=policy_kwargs_for([64, 64]), **dict(test_settings, meta_inputs=meta.meta_inputs,
                                                                      n_epochs=args.n_epochs or test_settings["n_epochs"]))
    rollout = test_settings["n_steps"] * n_envs
    for update in range(1, max(args.updates) + 1):
        student.learn(rollout, reset_num_timesteps=False)
        if update in args.updates:
            metric = evaluate_task_metric(student, args.env_id, goals, seed=EVAL_SEED).mean()
            data = student.rollout_tensors()
            print(f"learned loss: error {_error(student, teacher, data['observations']):.3f}"
                  f"{_target_error(student, teacher, data)} after {update} updates, "
                  f"task metric {metric:.1f}", flush=True)


if __name__ == "__main__":
    main()
