"""ML3 beside PPO (and optionally TRPO) on PointmassGoal's held-out goals (the left half-plane),
with the paper's metric: samples to 50% / 80% of PPO's final progress, their ratio, the break-even.

    python examples/compare_pointmass.py                   # short: 2 seeds, ~5 minutes
    python examples/compare_pointmass.py --seeds 0 1 2 3 4 --trpo --net-archs 64,64 32 128,128,128
    python examples/compare_pointmass.py --quick           # a few seconds

The same as ``ml3 compare PointmassGoal-v0 ...``; a loss is meta-trained per seed on the right
half-plane first (``--meta-loss FILE`` reuses one).
"""

import argparse
import os

import torch

from sb3_ml3.experiments import run_compare, save_outputs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--meta-loss", default=None)
    parser.add_argument("--meta-train-steps", type=int, default=None, help="default: the recipe's (200k)")
    parser.add_argument("--timesteps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--net-archs", nargs="+", default=["64,64"])
    parser.add_argument("--trpo", action="store_true", help="also run TRPO (sb3-contrib)")
    parser.add_argument("--out", default="compare_pointmass")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--force", action="store_true", help="replace the results already in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run_compare(
        "PointmassGoal-v0", algos=("ml3", "ppo", "trpo") if args.trpo else ("ml3", "ppo"),
        meta_loss=args.meta_loss, meta_train_steps=args.meta_train_steps, seeds=args.seeds,
        total_timesteps=args.timesteps, net_archs=args.net_archs, quick=args.quick,
        out_dir=args.out, force=args.force, progress=not args.quick,
    )
    save_outputs(results, args.out)
    print(results["table"])
    print("wrote", ", ".join([os.path.join(args.out, "results.json"), results["csv"], *results["figures"]]))
    return results


if __name__ == "__main__":
    main()
