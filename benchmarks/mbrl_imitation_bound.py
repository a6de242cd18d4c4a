"""How close can a fresh policy get in N updates when its loss pulls it towards a target, even a perfect one?

The quadratic meta-loss of ``ml3 mbrl``, M = mean_t sum_j w_j(c_t) (a_t,j - t_j(c_t))^2, pulls each policy towards
its learned target t(c) on the states of the latest real rollout. So its policies approach the goal about as fast
as a policy regressed onto a target on its own rollouts, one step per update (DAgger's protocol: the states come
from the learner, the actions from the target). The learned weights w(c) and rate can step differently from plain
Adam, so the rows are a guide to what a loss of this form can do, not a proof. This script measures that imitation
speed, with plain Adam
(PyTorch's; every step size of ``--lrs`` and eps of ``--eps``) and the steps weighed uniformly or, with ``--weights
late``, on the ramp ``ml3 mbrl --loss-time-weights late`` starts from (0.1 at the first step to 1.9 at the last: the
last states decide the final distance), for two targets:

* ``oracle``: the env's hand-written controller (ReacherGoal4D: inverse kinematics + joint PD; final distance 0),
  the best target any learned loss could have;
* ``loss_target``: the seed's own meta-trained target t(c) (:meth:`sb3_ml3.model_based.mbrl_nets.LossAndRate.minimiser`).

Each seed of a finished ``ml3 mbrl`` folder is re-created from its stored settings: the same held-out goals, reset
seeds and starting policies as its meta-test. The table sets the bound beside ML3's curve and the task-loss baseline
through the model from the seed's stored row. The step size is chosen per target on the held-out goals themselves,
after 20 updates: an optimistic bound, not a method.

    python benchmarks/mbrl_imitation_bound.py docs/results/mbrl/reacher_minimiser03_armpolicy_restarts3_val30_taskmodels \\
        --out docs/results/mbrl/imitation_bound.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from sb3_ml3.experiments.oracles import oracle_for
from sb3_ml3.experiments.store import atomic_write_json
from sb3_ml3.functional import Params
from sb3_ml3.model_based.mbrl import MBRLExperiment
from sb3_ml3.model_based.dynamics import RealEnvs
from sb3_ml3.model_based.mbrl_store import read_seed

TARGETS = ("oracle", "loss_target")
#: the update counts the table reports (20: the goal's third of 60)
SHOWN = (3, 10, 20, 60)


def imitation_curve(exp: MBRLExperiment, envs: RealEnvs, target: str, lr: float, eps: float, updates: int,
                    weights: str = "uniform") -> list[list[float]]:
    """Real final distances per update and goal ``(updates + 1, goals)`` of the meta-test's starting policies, each
    updated by one Adam step per real rollout on mean_t w_t |pi(s_t) - target(s_t)|^2 over that rollout's states."""
    params = {k: v.clone().requires_grad_(True) for k, v in exp.meta_test_policies(len(envs.goals)).items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, eps=eps)
    oracle = oracle_for(exp.env.env_id)
    goals = torch.as_tensor(envs.goals, dtype=torch.float32)

    def step(theta: Params, states: torch.Tensor, features: torch.Tensor, context: torch.Tensor,
             _actions: torch.Tensor) -> Params:
        with torch.no_grad():
            if target == "loss_target":
                wanted = exp.meta_loss.minimiser(context)
            else:  # the oracle reads the env's observation: the state, then the goal
                obs = torch.cat([states, goals[:, None].expand(-1, states.shape[1], -1)], -1)
                wanted = torch.as_tensor(oracle.act(obs.reshape(-1, obs.shape[-1]).numpy()),
                                         dtype=torch.float32).reshape(*states.shape[:2], -1)
        steps = states.shape[1]
        w = torch.linspace(0.1, 1.9, steps) if weights == "late" and steps > 1 else torch.ones(steps)
        optimizer.zero_grad()
        (((exp.policy(theta, features) - wanted) ** 2).sum(-1) * w).mean(-1).sum().backward()
        optimizer.step()
        return theta

    return exp.real_updates(envs, params, updates, step)[0]


def seed_rows(out_dir: str, env_id: str, seed: int, lrs: list[float], epss: list[float], weightings: list[str]
              ) -> dict[str, Any]:
    config, row, meta_loss = read_seed(out_dir, env_id, seed)
    exp = MBRLExperiment(env_id, config, seed)
    exp.meta_loss.load_state_dict(meta_loss.state_dict())
    envs = RealEnvs(env_id, exp.meta_test_goals("test"))
    if oracle_for(env_id) is None:
        raise SystemExit(f"{env_id} has no oracle controller to imitate.")
    try:
        runs = [{"target": target, "lr": lr, "eps": eps, "weights": weights,
                 "final_distance": imitation_curve(exp, envs, target, lr, eps, config.test_updates, weights)}
                for target, lr, eps, weights in itertools.product(TARGETS, lrs, epss, weightings)]
    finally:
        envs.close()
    return {"seed": seed, "ml3": row["test"]["ml3"]["final_distance"],
            "task_model": row["test"]["task_model"]["final_distance"], "imitation": runs}


def summary(seeds: list[dict[str, Any]], at: int = 20) -> dict[str, Any]:
    """Mean-over-goals-and-seeds curves: ML3, the model baseline, and per target and weighting its best (lr, eps)
    at ``at``."""
    def mean(curves: list[list[list[float]]]) -> list[float]:
        return np.mean([np.mean(c, axis=1) for c in curves], axis=0).tolist()

    out = {"ml3": mean([s["ml3"] for s in seeds]), "task_model": mean([s["task_model"] for s in seeds])}
    for target, weights in itertools.product(TARGETS, sorted({r["weights"] for r in seeds[0]["imitation"]})):
        settings = {(r["lr"], r["eps"]) for r in seeds[0]["imitation"] if (r["target"], r["weights"]) == (target, weights)}
        curves = {k: mean([next(r["final_distance"] for r in s["imitation"] if (r["target"], r["lr"], r["eps"],
                                r["weights"]) == (target, *k, weights)) for s in seeds]) for k in settings}
        best = min(curves, key=lambda k: curves[k][at])
        out[f"{target}, {weights}"] = {"lr": best[0], "eps": best[1], "curve": curves[best[0], best[1]],
                                       "at_by_setting": {f"lr {k[0]:g} eps {k[1]:g}": v[at]
                                                         for k, v in sorted(curves.items())}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a finished ml3 mbrl output folder (with seeds/)")
    parser.add_argument("--env", default="ReacherGoal4D-v0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], help="Adam step sizes")
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-8], help="Adam's eps (PyTorch's 1e-8; mbrl: 1e-2)")
    parser.add_argument("--weights", nargs="+", choices=("uniform", "late"), default=["uniform", "late"],
                        help="how the steps of a rollout are weighed (late: a ramp from 0.1 to 1.9)")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists: pass --force to overwrite it.")
    if not args.lrs or any(not lr > 0 for lr in args.lrs) or any(not e > 0 for e in args.eps):
        raise SystemExit("--lrs and --eps must be positive numbers.")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = []
    for seed in args.seeds:
        seeds.append(seed_rows(args.results, args.env, seed, args.lrs, args.eps, args.weights))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = summary(seeds)
    print(f"mean final distance on held-out goals, {len(seeds)} seeds, after {' / '.join(map(str, SHOWN))} updates")
    rows = [("ML3", result["ml3"]), ("task loss through the model", result["task_model"])]
    imitations = [k for k in result if k not in ("ml3", "task_model")]
    rows += [(f"imitating: {k} (Adam {result[k]['lr']:g}, eps {result[k]['eps']:g})", result[k]["curve"])
             for k in imitations]
    for name, curve in rows:
        print(f"  {name:55} " + " / ".join(f"{curve[i]:.4f}" for i in SHOWN if i < len(curve)))
    for k in imitations:
        print(f"  {k} after 20 updates by setting: " + ", ".join(f"{s}: {v:.4f}" for s, v in
                                                                   result[k]["at_by_setting"].items()))
    atomic_write_json(args.out, {"results": args.results, "env_id": args.env, "lrs": args.lrs, "eps": args.eps,
                                 "weights": args.weights,
                                 "summary": result, "seeds": seeds, "wall_seconds": time.perf_counter() - t0,
                                 "command": "python benchmarks/mbrl_imitation_bound.py " + " ".join(
                                     json.dumps(a) if " " in a else a for a in sys.argv[1:])})
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
