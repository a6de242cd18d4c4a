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

from sb3_ml3.experiments import meta_train_loss, run_compare, save_outputs, settings_for

ENV_ID = "ReacherGoal-v0"


def meta_train(seed: int, steps: int, path: str) -> int:
    """Algorithm 4 on the training goals with the recipe's meta-validation (every 25k steps a frozen
    copy of the loss trains a fresh policy on validation goals of the train split; the best copy is
    kept); saves the loss, returns its env steps (meta-training and validation)."""
    _, used = meta_train_loss(ENV_ID, seed, steps, settings_for("ml3", ENV_ID), path=path)
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
        net_archs=[args.net_arch], progress=not args.quick, out_dir=args.out, force=True,
    )
    save_outputs(results, args.out)
    print(results["table"])
    print("wrote", ", ".join([os.path.join(args.out, "results.json"), results["csv"], *results["figures"]]))
    return results


if __name__ == "__main__":
    main()
