"""How far can five policy updates go from a fresh policy, given a loss that already knows the answer?

The paper's MountainCar claim asks a learned loss to take a policy to the goal within 5 updates from every start
state. This script asks how far losses that already know the answer get there with fresh policies (a reference
for what a learned loss could do, not a proof): it replaces M_phi by two hand-written losses that encode a
solution, and takes the inner step on them from fresh policies, one per start state, 5 updates: Adam (the
statistics kept across updates), or with ``--optimizer sgd`` plain SGD, whose step size also stands for any
rescaling of the loss:

* ``feedback``: sum_t (a_t - c(s_t))^2 with c(s) = clamp(0.3 x + 5 v - 0.05, -F, F), a linear state feedback that
  takes the car to the goal from each of the seven default start states within the 35 steps (checked here);
* ``energy``: -sum_t a_t v_{t+1}, a reward for pushing along the velocity (energy pumping).

Success is the paper's: final distance |x_T - g| under 0.05 after some update 1..5. Reported per start state,
averaged over seeds, for the MLP and linear policies of ``ml3 mountain-car`` and several step sizes.

    python benchmarks/mountain_car_oracle_losses.py --out docs/results/mountain_car/oracle_losses.json
    python benchmarks/mountain_car_oracle_losses.py --optimizer sgd --lrs 1 3 10 30 100 300 1000 \
        --out docs/results/mountain_car/oracle_losses_sgd.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable

import torch
from torch.func import grad

from sb3_ml3.envs.mountain_car import MAX_FORCE, torch_step
from sb3_ml3.experiments.store import atomic_write_json
from sb3_ml3.inner_optimizers import SGD, Adam
from sb3_ml3.model_based.mountain_car import MountainCarConfig, at_rest, final_distance, init_policy, unroll

LOSSES = ("feedback", "energy")


def feedback_target(states: torch.Tensor) -> torch.Tensor:
    """c(s) = clamp(0.3 x + 5 v - 0.05, -F, F): a state feedback that reaches the goal from every default start."""
    return torch.clamp(0.3 * states[..., :1] + 5.0 * states[..., 1:2] - 0.05, -MAX_FORCE, MAX_FORCE)


def make_loss(name: str, batch: tuple[torch.Tensor, torch.Tensor], horizon: int) -> Callable:
    """The hand-written loss ``name`` of B policies (summed, so each policy steps on its own term)."""

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        states, actions = unroll(params, *batch, horizon)
        if name == "feedback":
            return ((actions - feedback_target(states[:, :-1])) ** 2).sum()
        return -(actions * states[:, 1:, 1:2]).sum()

    return loss


def success_within(config: MountainCarConfig, loss_name: str, policy: str, lr: float, eps: float,
                   starts: list[float], seed: int, updates: int, optimizer: str = "adam") -> torch.Tensor:
    """Per start, 1.0 where some update 1..updates ends under the success threshold (``optimizer``: adam or sgd)."""
    batch = (at_rest(starts), torch.full((len(starts), 1), float(config.goal)))
    params = init_policy(len(starts), config.policy_hidden, torch.Generator().manual_seed(seed), kind=policy)
    rule = Adam(eps=eps) if optimizer == "adam" else SGD()
    step, state, best = grad(make_loss(loss_name, batch, config.horizon)), None, None
    for _ in range(updates):
        params, state = rule.step(params, step(params), lr, state)
        with torch.no_grad():
            distance = final_distance(unroll(params, *batch, config.horizon)[0], config.goal)
        best = distance if best is None else torch.minimum(best, distance)
    return (best < config.success_threshold).float()


def check_feedback_solves(config: MountainCarConfig, starts: list[float]) -> list[float]:
    """The final distance of the feedback law itself from each start (it must be under the threshold)."""
    state = at_rest(starts)
    for _ in range(config.horizon):
        state = torch_step(state, feedback_target(state))
    return (state[:, 0] - config.goal).abs().tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="the inner step's rule")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.3, 1.0], help="step sizes")
    parser.add_argument("--eps", type=float, default=1e-2, help="Adam's eps (the mbrl and mountain-car default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--updates", type=int, default=5, help="policy updates (the paper's claim: 5)")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists: pass --force to overwrite it.")
    if args.updates < 1 or not args.lrs or any(not lr > 0 for lr in args.lrs) or not args.eps > 0:
        raise SystemExit("--updates must be positive, --lrs and --eps positive numbers.")
    config = MountainCarConfig()
    starts = list(config.train_eval_starts) + list(config.test_starts)
    solved = check_feedback_solves(config, starts)
    if max(solved) >= config.success_threshold:
        raise SystemExit(f"the feedback law no longer reaches the goal from every start: {solved}")
    rows, t0 = [], time.perf_counter()
    for loss_name, policy, lr in itertools.product(LOSSES, ("linear", "mlp"), args.lrs):
        hits = torch.stack([success_within(config, loss_name, policy, lr, args.eps, starts, seed, args.updates,
                                           args.optimizer)
                            for seed in args.seeds])
        row = {"loss": loss_name, "policy": policy, "lr": lr, "per_start": dict(zip(map(str, starts),
               hits.mean(0).tolist())), "all": float(hits.mean()), "every_start_seeds": float(hits.all(1).float().mean())}
        rows.append(row)
        print(f"{loss_name:8} {policy:6} {args.optimizer} lr {lr:<5g} success within {args.updates}: "
              f"{row['all']:.2f} of start x seed, every start in {row['every_start_seeds']:.0%} of seeds; per start "
              + " ".join(f"{v:.1f}" for v in row["per_start"].values()), flush=True)
    atomic_write_json(args.out, {"starts": starts, "feedback_law_final_distances": solved, "optimizer": args.optimizer,
                                 "eps": args.eps, "seeds": args.seeds, "updates": args.updates, "rows": rows,
                                 "wall_seconds": time.perf_counter() - t0})
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
