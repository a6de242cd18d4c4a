"""Does the shaped task loss itself lead gradient descent to the goal? (the premise of Fig. 6a-b)

ML3's shaping claim rests on the shaped task loss (an intermediate goal on the left slope first) having a
landscape that leads a policy over the hill, where the unshaped one stops in the greedy minimum. This
script tests that premise without any learned loss: it optimises fresh policies directly on each task loss,
by backpropagation through the 35-step unroll of the exact dynamics with Adam, and reports the final
distance |x_T - g| and the success rate (under 0.05) from train and unseen start states.

    python benchmarks/mountain_car_landscape.py --out docs/results/mountain_car/landscape.json

Every combination of policy class (``mlp``, ``linear``), task-loss state (``position``: |x - target|,
``state``: ||(x, v) - target state|| with the authors' goal velocities) and variant (shaped, unshaped) is run
for each step size, from the same fresh policies.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import torch

from sb3_ml3.experiments.store import atomic_write_json
from sb3_ml3.model_based.mountain_car import (
    TASK_LOSSES,
    MountainCarConfig,
    at_rest,
    final_distance,
    init_policy,
    task_loss_per_policy,
    unroll,
)


def optimise(config: MountainCarConfig, variant: str, starts: list[float], lr: float, steps: int,
             seed: int) -> dict[str, object]:
    """Adam on the sum over policies of L_T, one fresh policy per start; final distances every 50 steps."""
    n = len(starts)
    params = init_policy(n, config.policy_hidden, torch.Generator().manual_seed(seed), kind=config.policy)
    params = {k: v.clone().requires_grad_() for k, v in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    batch = (at_rest(starts), torch.full((n, 1), float(config.goal)))
    curve = []
    for step in range(1, steps + 1):
        loss = task_loss_per_policy(config, variant, unroll(params, *batch, config.horizon)[0]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps:
            with torch.no_grad():
                curve.append(final_distance(unroll(params, *batch, config.horizon)[0], config.goal).tolist())
    final = torch.tensor(curve[-1])
    best = torch.tensor(curve).min(0).values
    return {"curve": curve, "final_mean": float(final.mean()), "success": float((final < config.success_threshold).float().mean()),
            "best_mean": float(best.mean()), "ever_success": float((best < config.success_threshold).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per policy")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists: pass --force to overwrite it.")
    if args.steps < 1 or not args.lrs or any(lr <= 0 for lr in args.lrs):
        raise SystemExit("--steps must be positive and --lrs positive numbers.")
    base = MountainCarConfig()
    starts = {"train": list(base.train_eval_starts), "unseen": list(base.test_starts)}
    rows, t0 = [], time.perf_counter()
    for policy, task_state, variant, lr in itertools.product(("mlp", "linear"), ("position", "state"), TASK_LOSSES,
                                                             args.lrs):
        config = MountainCarConfig(policy=policy, task_state=task_state)
        row = {"policy": policy, "task_state": task_state, "variant": variant, "lr": lr}
        for split, xs in starts.items():
            runs = [optimise(config, variant, xs, lr, args.steps, seed) for seed in args.seeds]
            row[split] = {k: sum(r[k] for r in runs) / len(runs) for k in ("final_mean", "success", "best_mean", "ever_success")}
        rows.append(row)
        print(f"{policy:6} {task_state:8} {variant:8} lr {lr:<6g} " + "  ".join(
            f"{s}: final {row[s]['final_mean']:.3f} success {row[s]['success']:.2f} (ever {row[s]['ever_success']:.2f})"
            for s in starts), flush=True)
    atomic_write_json(args.out, {"steps": args.steps, "seeds": args.seeds, "starts": starts, "rows": rows,
                                 "wall_seconds": time.perf_counter() - t0})
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
