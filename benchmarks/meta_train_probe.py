"""Probe an ML3 meta-training recipe: does the loss learn, long before a comparison is worth running?

    python benchmarks/meta_train_probe.py AntGoal-v0 --out probes/ant_A --timesteps 8000000 \\
        --meta-train '{"task_critic": true, "meta_epochs": 10, "task_clip_range": 0.2, "meta_lr": 0.001}'

Meta-trains one seed with the env's recipe (``settings_for("ml3", env_id)``) (``--meta-train`` overrides its ``meta_train``
entry, ``--validation`` its ``meta_validation``, ``--policy-kwargs`` the policy's) and prints two
signals while it runs:

* every ``--print-every`` iterations, the meta-train policies' own episode sum of the task reward
  (``task_reward``, else the env's reward) at three ages within a policy lifetime: its first three
  updates, the middle and the last five. A loss that teaches shows later ages above earlier ones;
* every meta-validation, the validation metric (:class:`~sb3_ml3.ml3.MetaValidationCallback`:
  fresh policies on train-split goals), which is also appended to ``<out>/validation.jsonl``.

The state is checkpointed at every validation (:class:`~sb3_ml3.experiments.MetaTrainCheckpoint`), so
rerunning the same command after a stop continues where it was; ``<out>/best_meta_loss.zip`` is the
best validated loss, usable with ``ml3 compare --meta-loss``.

``--init-meta-loss`` starts meta-training from a saved meta-loss (``MetaLoss.save``, e.g. another
probe's ``best_meta_loss.zip``) instead of a fresh one, e.g. to go on with a better expert; its
architecture then comes from the file. The samples that trained it count as meta-train samples too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from sb3_ml3.experiments import MetaTrainCheckpoint, make_train_env, policy_kwargs_for, settings_for
from sb3_ml3.ml3 import ML3, MetaValidationCallback


class LifetimeProgress(BaseCallback):
    """The meta-train policies' episode sum of the task reward, grouped by policy age (updates since reset)."""

    def __init__(self, label: str, print_every: int) -> None:
        super().__init__()
        self.label, self.print_every = label, print_every
        self.by_age: dict[int, list[float]] = defaultdict(list)
        self._rewards: list[np.ndarray] = []
        self._episode_steps = 1
        self._start = time.time()

    def _init_callback(self) -> None:
        spec = self.model.env.get_attr("spec")[0]
        self._episode_steps = (spec.max_episode_steps if spec is not None else None) or 1

    def _on_rollout_start(self) -> None:
        self._rewards = []

    def _on_step(self) -> bool:
        model = self.model
        if model.task_reward is not None:
            self._rewards.append(np.array([info[model.task_reward] for info in self.locals["infos"]]))
        else:
            self._rewards.append(np.asarray(self.locals["rewards"], dtype=np.float64))
        return True

    def _on_rollout_end(self) -> None:
        model = self.model
        lifetime = model.policy_reset_interval or 10**9
        age = model.n_iterations % lifetime  # train() has not run yet: the age of the policy that collected
        per_step = np.stack(self._rewards).mean()  # over the rollout's steps and envs
        self.by_age[age].append(float(per_step * self._episode_steps))  # as an episode sum
        if (model.n_iterations + 1) % self.print_every == 0:
            def recent(ages: range) -> float:
                values = sum((self.by_age.get(a, [])[-4:] for a in ages), [])
                return float(np.mean(values)) if values else float("nan")

            n = min(lifetime, max(self.by_age) + 1)
            print(f"{self.label} iteration {model.n_iterations + 1} steps {model.num_timesteps}: episode task reward "
                  f"by age: first {recent(range(0, 3)):.1f}  middle {recent(range(n // 2 - 2, n // 2 + 3)):.1f}  "
                  f"last {recent(range(max(n - 5, 0), n)):.1f}  std {torch.exp(model.policy.log_std).mean().item():.3f}  "
                  f"{time.time() - self._start:.0f} s", flush=True)


class LoggedValidation(MetaValidationCallback):
    """MetaValidationCallback that also prints and appends each validation to a JSON-lines file."""

    def __init__(self, log_path: str, label: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_path, self.label = log_path, label

    def _validate(self) -> None:
        super()._validate()
        steps, metric = self.history[-1]
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"steps": steps, "metric": metric}) + "\n")
        print(f"{self.label} validation at {steps} steps: {metric:.2f} (best {self.best_metric:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id")
    parser.add_argument("--out", required=True, help="folder for the checkpoint, the validation log and the best loss")
    parser.add_argument("--timesteps", type=int, default=2_000_000, help="meta-train env steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meta-train", default="{}", help="JSON overrides of the recipe['meta_train']")
    parser.add_argument("--validation", default=None, help="JSON overrides of the recipe['meta_validation']")
    parser.add_argument("--policy-kwargs", default="{}", help="JSON extra policy_kwargs, e.g. '{\"log_std_max\": 0}'")
    parser.add_argument("--init-meta-loss", default=None, help="a saved meta-loss to start meta-training from")
    parser.add_argument("--print-every", type=int, default=50, help="iterations between progress lines")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides = {"meta_train": json.loads(args.meta_train)}
    if args.validation is not None:
        overrides["meta_validation"] = json.loads(args.validation)
    settings = settings_for("ml3", args.env_id, overrides)
    policy_kwargs = dict(policy_kwargs_for(settings.get("meta_train_net_arch", [64, 64])), **json.loads(args.policy_kwargs))
    os.makedirs(args.out, exist_ok=True)
    label = os.path.basename(os.path.normpath(args.out))
    env = make_train_env(args.env_id, settings["n_envs"], args.seed, split="train", normalize=False)
    checkpoint_path = os.path.join(args.out, "checkpoint.zip")
    fingerprint = {"settings": settings, "policy_kwargs": policy_kwargs, "seed": args.seed}
    if args.init_meta_loss is not None:
        if not os.path.exists(args.init_meta_loss):
            parser.error(f"--init-meta-loss: no file {args.init_meta_loss}")
        fingerprint["init_meta_loss"] = os.path.abspath(args.init_meta_loss)
    try:
        loaded = MetaTrainCheckpoint.load_model(checkpoint_path, env, fingerprint)
    except ValueError as error:
        raise SystemExit(f"{error} Or use another --out.") from error
    restored = None
    if loaded is not None:
        model, restored = loaded
        print(f"{label}: resuming at {model.num_timesteps} steps", flush=True)
    else:
        model = ML3("MlpPolicy", env, meta_train=True, seed=args.seed, policy_kwargs=policy_kwargs,
                    meta_loss=args.init_meta_loss, **settings["meta_train"])
        if args.init_meta_loss is not None:
            print(f"{label}: meta-training starts from {args.init_meta_loss}", flush=True)
    validation = LoggedValidation(os.path.join(args.out, "validation.jsonl"), label, args.env_id, seed=args.seed,
                                  best_meta_loss_path=os.path.join(args.out, "best_meta_loss.zip"),
                                  **settings["meta_validation"])
    checkpoint = MetaTrainCheckpoint(checkpoint_path, validation.eval_freq, fingerprint, validation, restored)
    remaining = args.timesteps - (model.num_timesteps if restored is not None else 0)
    model.learn(remaining, callback=CallbackList([LifetimeProgress(label, args.print_every), validation, checkpoint]),
                reset_num_timesteps=restored is None)
    checkpoint.save()
    model.save_meta_loss(os.path.join(args.out, "final_meta_loss.zip"))
    print(f"{label}: validation history {validation.history}; best {validation.best_metric:.2f} "
          f"at {validation.best_timesteps} steps", flush=True)


if __name__ == "__main__":
    main()
