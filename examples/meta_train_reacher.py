"""Meta-train a learned loss on ReacherGoal's training goals, then train a *new* policy architecture
([128, 128, 128], the loss was meta-trained on [64, 64]) with it on held-out goals, beside PPO.

    python examples/meta_train_reacher.py                  # short: 1 seed, ~3 minutes on a laptop CPU
    python examples/meta_train_reacher.py --seeds 0 1 2 --meta-train-steps 300000 --timesteps 100000
    python examples/meta_train_reacher.py --quick          # a few seconds, to check the installation

Writes the learned loss, results.json, compare_curves.csv and learning_curves.png to --out.
"""

import argparse
import os

import torch
from stable_baselines3.common.env_util import make_vec_env

from sb3_ml3 import ML3
from sb3_ml3.compare import ML3_SETTINGS, run_compare, save_outputs
from sb3_ml3.ml3 import MetaValidationCallback

ENV_ID = "ReacherGoal-v0"


def meta_train(seed: int, steps: int, path: str) -> int:
    """Algorithm 4 on the training goals (task_split="train") with meta-validation; saves the loss,
    returns its env steps (meta-training and validation)."""
    recipe = ML3_SETTINGS[ENV_ID]
    env = make_vec_env(ENV_ID, n_envs=recipe["n_envs"], seed=seed, env_kwargs={"task_split": "train"})
    model = ML3("MlpPolicy", env, meta_train=True, seed=seed,
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}}, **recipe["meta_train"])
    # every 25k steps a frozen copy of the loss trains a fresh policy on validation goals of the
    # train split; the best copy is restored at the end (meta-training is noisy, the last copy is
    # not always the best)
    validation = MetaValidationCallback(ENV_ID, seed=seed, **recipe["meta_validation"])
    model.learn(steps, callback=validation)
    used = int(model.num_timesteps) + validation.validation_timesteps
    model.meta_loss.metadata["meta_train_timesteps"] = used  # for the break-even
    model.save_meta_loss(path)
    return used


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--meta-train-steps", type=int, default=100_000)
    parser.add_argument("--timesteps", type=int, default=50_000, help="meta-test env steps per run")
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--net-arch", default="128,128,128", help="the new policy architecture")
    parser.add_argument("--out", default="reacher_meta_loss")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_train_steps, args.timesteps, args.eval_every = 1_600, 2_048, 512
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)

    # 1. one learned loss, meta-trained on the training goals (seed of the first run)
    loss_path = os.path.join(args.out, "reacher_meta_loss.zip")
    used = meta_train(args.seeds[0], args.meta_train_steps, loss_path)
    print(f"meta-trained on {used:,} env steps -> {loss_path}")

    # 2. meta-test it (Algorithm 5) on held-out goals with a new architecture, PPO beside it
    results = run_compare(
        ENV_ID, algos=("ml3", "ppo"), meta_loss=loss_path, seeds=args.seeds,
        n_tasks=3 if args.quick else 10, total_timesteps=args.timesteps, eval_every=args.eval_every,
        net_archs=[args.net_arch], progress=not args.quick,
    )
    save_outputs(results, args.out)
    print(results["table"])
    print("wrote", ", ".join([os.path.join(args.out, "results.json"), results["csv"], *results["figures"]]))
    return results


if __name__ == "__main__":
    main()
