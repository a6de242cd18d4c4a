"""``ml3 mbrl``: model-based ML3 on PointmassGoal-v0 and ReacherGoal4D-v0 (Fig. 3), with references and figures.

Per env and seed :class:`~.mbrl.MBRLExperiment` meta-trains a loss-and-rate (Algorithm 3) and
meta-tests it from real rollouts (Algorithm 5) beside the task loss through the learned model and
through the exact dynamics. This module adds the reference policies of METRICS.md (zero action,
uniform random, the best constant action, the oracle), measured by the same metric (real final
distance after the horizon) on the same held-out goals and reset seeds; the summary (updates ML3
needs to reach the task loss's final distance); the figures; and the CLI.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sb3_ml3.inner_optimizers import INNER_OPTIMIZERS
from sb3_ml3.model_based.dynamics import RealEnvs
from sb3_ml3.model_based.mbrl import MBRLConfig, MBRLExperiment, config_dict
from sb3_ml3.model_based.mbrl_config import LOSS_OUTCOMES, LOSS_TIME_WEIGHTS, TASK_MODEL_FROM
from sb3_ml3.model_based.mbrl_envs import ENV_IDS, LOSS_FEATURES, mbrl_env
from sb3_ml3.model_based.mbrl_store import SEEDS_DIR, SeedStore

#: every method a seed's row may hold (task_model_real only with --real-state-baseline)
METHODS = ("ml3", "task_model", "task_exact", "task_model_real")
COLORS = {"ml3": "tab:blue", "task_model": "tab:orange", "task_exact": "tab:green", "task_model_real": "tab:brown"}
QUICK = dict(n_outer=40, model_every=20, random_episodes=60, model_epochs=20, test_updates=12, n_test_goals=4,
             batch_goals=4)


def reference_final_distances(env_id: str, goals: np.ndarray, horizon: int, seed: int) -> dict[str, dict[str, Any]]:
    """Zero action, random, best constant action (5 x 5 grid + 2 refinements, chosen on these goals) and oracle:
    the real final distance after ``horizon`` steps per goal, reset seeds ``seed + i`` as every method."""
    from sb3_ml3.experiments.oracles import oracle_for
    from sb3_ml3.experiments.references import (LABELS, ConstantActionPolicy, RandomActionPolicy, ZeroActionPolicy,
                                                constant_action_candidates)

    envs = RealEnvs(env_id, goals)
    space = envs.envs[0].action_space
    try:
        def final(policy: Any) -> list[float]:
            return envs.rollout(policy.act, horizon, seed).final_distance.tolist()

        def constant(action: np.ndarray) -> float:
            return float(np.mean(final(ConstantActionPolicy(action))))

        scores = {tuple(a): constant(a) for a in constant_action_candidates(space)}
        best, step = min(scores, key=scores.get), 0.25
        for _ in range(2):
            step /= 2.0
            for offset in itertools.product((-step, 0.0, step), repeat=len(best)):
                a = tuple(np.clip(np.asarray(best) + offset, -1.0, 1.0).astype(np.float32))
                scores.setdefault(a, constant(np.asarray(a)))
            best = min(scores, key=scores.get)
        policies = {"zero_action": ZeroActionPolicy(space), "random": RandomActionPolicy(space, seed),
                    "best_constant_action": ConstantActionPolicy(np.asarray(best))}
        oracle = oracle_for(env_id)
        if oracle is not None:
            policies["oracle"] = oracle
        rows = {}
        for name, policy in policies.items():
            per_goal = final(policy)
            rows[name] = {"final_distance": float(np.mean(per_goal)), "per_goal": per_goal,
                          "label": LABELS[name] + (f": {policy.description}" if name == "oracle" else "")}
        rows["best_constant_action"]["action"] = [float(a) for a in best]
        return rows
    finally:
        envs.close()


def updates_to_reach(curve: Sequence[float], level: float) -> int | None:
    """The first update after which ``curve`` is at or below ``level`` (None: never within the budget)."""
    return next((j for j, value in enumerate(curve) if value <= level), None)


def methods_of(rows: list[dict[str, Any]]) -> list[str]:
    """The :data:`METHODS` every seed's held-out row holds, in that order."""
    return [m for m in METHODS if all(m in r["test"] for r in rows)]


def summarise(env_id: str, rows: list[dict[str, Any]], references: dict[str, Any]) -> dict[str, Any]:
    """Mean curves over seeds (goals averaged inside a seed) and the updates ML3 needs to reach each baseline's end.
    The goal reads the issue's baseline, the task loss through the model (task_model)."""
    methods = methods_of(rows)
    curves = {m: np.array([np.mean(r["test"][m]["final_distance"], axis=1) for r in rows]) for m in methods}
    mean = {m: curves[m].mean(0) for m in methods}
    budget = len(mean["ml3"]) - 1
    out: dict[str, Any] = {"env_id": env_id, "updates": budget, "references": {k: v["final_distance"] for k, v in references.items()}}
    for m in methods:
        out[f"final_{m}"] = float(mean[m][-1])
        out[f"curve_{m}"] = mean[m].tolist()
    out["final_ml3_train_goals"] = float(np.mean([np.mean(r["train"]["ml3"]["final_distance"][-1]) for r in rows]))
    for base in methods[1:]:
        reach = updates_to_reach(mean["ml3"], float(mean[base][-1]))
        out[f"ml3_updates_to_{base}_final"] = reach
        out[f"ratio_to_{base}"] = None if reach is None else reach / budget
        out[f"per_seed_ml3_updates_to_{base}_final"] = [updates_to_reach(curves["ml3"][i], curves[base][i][-1])
                                                        for i in range(len(rows))]
    ratio = out["ratio_to_task_model"]
    out["goal_met"] = ratio is not None and ratio <= 1.0 / 3.0
    return out


def meta_train_with_restarts(env_id: str, config: MBRLConfig, seed: int, progress: Callable[[int, float], None]
                             ) -> tuple[MBRLExperiment, dict[str, Any]]:
    """Meta-train ``config.meta_restarts`` independent losses for one seed; keep the best by meta-validation.

    The choice reads only the validation score on **train** goals (:class:`~.mbrl_validation.KeepBest`'s kept score),
    never a held-out goal; the log lists every restart's score and the kept one."""
    best: tuple[float, MBRLExperiment, dict[str, Any]] | None = None
    scores, models = [], []
    for restart in range(config.meta_restarts):
        experiment = MBRLExperiment(env_id, config, seed, restart)
        log = experiment.meta_train(progress)
        score = float(log["validation"].get("kept_score", float("inf")))
        scores.append(score)
        models.append((restart, experiment.model))
        if best is None or score < best[0]:
            best = (score, experiment, log)
    assert best is not None
    best[1].restart_models = models  # the task loss through the model may choose among them (task_model_from)
    if config.meta_restarts > 1:
        best[2]["restarts"] = {"scores": scores, "kept": best[1].restart}
    return best[1], best[2]


def run_mbrl(env_ids: Sequence[str], seeds: Sequence[int], config: MBRLConfig, progress: bool = True,
             store: SeedStore | None = None) -> dict[str, Any]:
    """Every env and seed; returns the JSON-ready results and the meta-losses ``{(env, seed): LossAndRate}``.

    With a ``store`` each finished seed is written at once, and a seed it already holds (``--resume``) is read
    back instead of run (:mod:`.mbrl_store`)."""
    results: dict[str, Any] = {"config": config_dict(config), "envs": {}, "partial": False}
    meta_losses = {}
    for env_id in env_ids:
        env = mbrl_env(env_id, config.horizon)
        rows = []
        for seed in seeds:
            start = time.time()

            def report(outer: int, value: float, _seed: int = seed) -> None:
                if progress and (outer % 50 == 0 or outer == config.n_outer):
                    print(f"  {env_id} seed {_seed}: outer {outer}/{config.n_outer}  task loss {value:.4f}  "
                          f"({time.time() - start:.0f} s)", flush=True)

            stored = store.load(env_id, seed) if store is not None else None
            if stored is not None:
                row, meta_loss = stored
                results.setdefault("seeds_read_back", []).append({"env_id": env_id, "seed": seed,
                                                                  "wall_s": row.get("wall_s")})
                if progress:
                    print(f"  {env_id} seed {seed}: finished earlier, read from {store.dir}", flush=True)
            else:
                try:
                    experiment, train_log = meta_train_with_restarts(env_id, config, seed, report)
                    row = experiment.meta_test(train_log)
                except KeyboardInterrupt:
                    results["partial"] = True
                    results["interrupted_at"] = {"env_id": env_id, "seed": seed}
                    break
                row["wall_s"] = time.time() - start
                meta_loss = experiment.meta_loss
                if store is not None:
                    store.save(env_id, seed, row, meta_loss)
            rows.append(row)
            meta_losses[(env_id, seed)] = meta_loss
        if not rows:
            break
        goals = np.asarray(rows[0]["test"]["goals"])
        references = reference_final_distances(env_id, goals, env.horizon, config.eval_seed)
        results["envs"][env_id] = {"horizon": env.horizon, "exact_dynamics": env.exact_label,
                                   "success_threshold": env.success_threshold, "references_seed0_goals": references,
                                   "per_seed": rows, "summary": summarise(env_id, rows, references)}
        if results["partial"]:
            break
    return {"results": results, "meta_losses": meta_losses}


# --------------------------------------------------------------------------- figures and table

REFERENCE_NAMES = {"zero_action": "zero action", "random": "random actions", "best_constant_action": "best constant action",
                   "oracle": "oracle (PD / IK + PD)"}
REFERENCE_COLORS = {"zero_action": "black", "random": "0.55", "best_constant_action": "tab:purple", "oracle": "tab:red"}
LABELS = {"ml3": "ML3 (loss + learned rate, real rollouts, no model)",
          "task_model": "task loss through the learned model", "task_exact": "task loss through the exact dynamics",
          "task_model_real": "task loss, real states + the model's derivatives"}


def plot_mbrl(results: dict[str, Any], out_dir: str) -> list[str]:
    """Fig. 3a (trajectories after ML3's updates, train goals blue, held-out orange) and Fig. 3b-c (curves)."""
    from sb3_ml3.atomic import atomic_path
    from sb3_ml3.plotting import _pyplot, plot_curves

    figures = []
    for env_id, entry in results["envs"].items():
        rows, s = entry["per_seed"], entry["summary"]
        short = env_id.split("-")[0]
        x = list(range(s["updates"] + 1))
        methods = methods_of(rows)
        curves = {LABELS[m]: [np.mean(r["test"][m]["final_distance"], axis=1).tolist() for r in rows] for m in methods}
        hlines = {REFERENCE_NAMES[k]: v for k, v in s["references"].items()}
        figures.append(plot_curves(
            os.path.join(out_dir, f"mbrl_{short}_final_distance.png"), x, curves, xlabel="policy update (meta-test)",
            ylabel=f"final distance to the goal (real env, {len(rows[0]['test']['goals'])} held-out goals)", logy=True,
            title=f"{env_id}: ML3 vs task loss, held-out goals", colors={LABELS[m]: COLORS[m] for m in methods},
            hlines=hlines, band_note="goals averaged in a seed; references: seed 0's goals",
            hline_colors={REFERENCE_NAMES[k]: c for k, c in REFERENCE_COLORS.items()}))
        plt = _pyplot()
        env = mbrl_env(env_id, entry["horizon"])
        fig, ax = plt.subplots(figsize=(5.0, 5.0), dpi=120)
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            states = torch.as_tensor(rows[0][split]["ml3"]["states"], dtype=torch.float32)
            path = env.position(states).numpy()
            goals = np.asarray(rows[0][split]["goals"])
            for i in range(len(goals)):
                ax.plot(path[i, :, 0], path[i, :, 1], color=color, linewidth=1.0, alpha=0.8)
            ax.scatter(goals[:, 0], goals[:, 1], marker="x", color=color, s=40,
                       label=f"{split} goals ({'meta-train region' if split == 'train' else 'held out'})")
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        what = "point" if short == "PointmassGoal" else "fingertip"
        ax.set_title(f"{env_id}: {what} paths after {s['updates']} ML3 updates\n"
                     f"(real rollouts, no model; seed {rows[0]['seed']})", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"mbrl_{short}_trajectories.png")
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        figures.append(path)
    return figures


def format_table(results: dict[str, Any]) -> str:
    lines = []
    heads = {"ml3": "ML3", "task_model": "task loss, model", "task_exact": "task loss, exact",
             "task_model_real": "task loss, real states + model"}
    for env_id, entry in results["envs"].items():
        s = entry["summary"]
        methods = methods_of(entry["per_seed"])
        lines.append(f"{env_id} (horizon {entry['horizon']}, {s['updates']} updates, final distance on held-out goals):")
        lines.append("  seed | " + " | ".join(heads[m] for m in methods) + " | ML3 on train goals | ML3 updates to "
                     "model's final | wall s | model baseline as tuned on train goals")
        for r, reach in zip(entry["per_seed"], s["per_seed_ml3_updates_to_task_model_final"]):
            finals = [np.mean(r["test"][m]["final_distance"][-1]) for m in methods]
            lines.append(f"  {r['seed']:4d} | " + " | ".join(f"{v:.4f}" for v in finals)
                         + f" | {np.mean(r['train']['ml3']['final_distance'][-1]):.4f} | {reach} | {r['wall_s']:.0f}"
                         + f" | {' '.join(str(v) for v in r.get('task_tuned_model', []))}"
                         + (f" (P of restart {r['task_model_restart']})" if "task_model_restart" in r else ""))
        lines.append("  mean | " + " | ".join(f"{s[f'final_{m}']:.4f}" for m in methods)
                     + f" | {s['final_ml3_train_goals']:.4f} | {s['ml3_updates_to_task_model_final']}")
        lines.append("  references: " + ", ".join(f"{k} {v:.4f}" for k, v in s["references"].items()))
        lines.append(f"  ML3 reaches the model task loss's final distance after {s['ml3_updates_to_task_model_final']} of "
                     f"{s['updates']} updates (ratio {s['ratio_to_task_model']}; goal <= 1/3: "
                     f"{'met' if s['goal_met'] else 'not met'}); the exact dynamics' after "
                     f"{s['ml3_updates_to_task_exact_final']}"
                     + (f"; the real-state baseline's after {s['ml3_updates_to_task_model_real_final']}"
                        if "task_model_real" in methods else ""))
    return "\n".join(lines)


COMMAND = "mbrl"
HELP = "model-based ML3: a loss with a learned learning rate vs the task loss through a learned model (Fig. 3)"
DESCRIPTION = (
    "Meta-train (Algorithm 3) a loss-and-rate M_phi(tau, g) on PointmassGoal-v0 / ReacherGoal4D-v0 train goals through "
    "an ensemble dynamics model learned from real rollouts; meta-test (Algorithm 5) it from real rollouts with no model "
    "on held-out goals, beside the task loss optimised through the learned model and through the exact dynamics "
    "(step sizes tuned on train goals), with the reference policies. Writes results.json, the meta-losses (zip of JSON "
    "spec + weights), the curves (Fig. 3b-c) and the trajectories (Fig. 3a)."
)


def add_arguments(p: Any) -> None:
    from sb3_ml3.cli_args import add_common, positive_float, positive_int
    from sb3_ml3.cli_args import seed as seed_type

    d = MBRLConfig()
    p.add_argument("--out", required=True,
                   help="output folder for results.json, the meta-losses, the PNG figures and seeds/ (one file per "
                        "finished seed); refused if it holds results, unless --resume or --force")
    p.add_argument("--envs", nargs="+", choices=list(ENV_IDS), default=list(ENV_IDS), help="envs (default: both)")
    p.add_argument("--seeds", type=seed_type, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-outer", type=positive_int, default=None, help=f"outer iterations per seed ({d.n_outer})")
    p.add_argument("--test-updates", type=positive_int, default=None, help=f"policy updates at meta-test ({d.test_updates})")
    p.add_argument("--model-every", type=positive_int, default=None,
                   help=f"outer iterations between model refreshes from the latest policies ({d.model_every}, Appendix A)")
    p.add_argument("--inner-steps", type=positive_int, default=d.inner_steps, help="K inner steps per outer iteration")
    p.add_argument("--meta-lr", type=positive_float, default=d.meta_lr, help="eta, the outer step (Adam)")
    p.add_argument("--alpha-max", type=positive_float, default=d.alpha_max, help="bound of the learned learning rate")
    p.add_argument("--alpha-init", type=positive_float, default=d.alpha_init,
                   help="the learned learning rate before meta-training (below --alpha-max)")
    p.add_argument("--inner-optimizer", choices=list(INNER_OPTIMIZERS), default=d.inner_optimizer,
                   help="the inner step: SGD with the learned rate (the paper's), or a differentiable Adam whose step "
                        "size is the learned rate (then e.g. --alpha-max 0.1 --alpha-init 0.02)")
    p.add_argument("--adam-eps", type=positive_float, default=d.adam_eps,
                   help="Adam's eps for --inner-optimizer adam (large, so the first steps pass a meta-gradient)")
    p.add_argument("--loss-features", choices=["state", *LOSS_FEATURES], default=d.loss_features,
                   help="what the meta-loss reads: the policy's features, or (ReacherGoal4D) the arm's own frame")
    p.add_argument("--policy-features", choices=["state", *LOSS_FEATURES], default=d.policy_features,
                   help="what the policies read (ML3's and the baselines' alike): the env's features, or "
                        "(ReacherGoal4D) the arm's own frame")
    p.add_argument("--task-policy-features", nargs="+", choices=["state", *LOSS_FEATURES], default=None,
                   help="the policy classes the task-loss baselines choose from on train goals, with their step size "
                        "(default: ML3's own class, --policy-features)")
    p.add_argument("--task-model-from", choices=list(TASK_MODEL_FROM), default=d.task_model_from,
                   help="the learned model the task loss through the model uses: the kept restart's (kept), or every "
                        "restart's, the best on train goals (restarts)")
    p.add_argument("--val-every", type=int, default=d.val_every,
                   help="meta-validation: every n outer iterations score the loss by real updates on train goals and "
                        "keep the best (0: off, the last weights)")
    p.add_argument("--val-updates", type=positive_int, default=d.val_updates, help="real updates per validation score")
    p.add_argument("--val-goals", type=positive_int, default=None,
                   help="train goals each validation score averages over (default: as many as the held-out goals, 10)")
    p.add_argument("--target-bound", type=positive_float, default=None,
                   help="the quadratic loss's target becomes b tanh(.) (e.g. 0.9: inside the action box)")
    p.add_argument("--loss-time-weights", choices=LOSS_TIME_WEIGHTS, default=d.loss_time_weights,
                   help="the learned loss weighs each step of a trajectory by a learned weight of its time index, "
                        "starting all 1 (uniform) or on a ramp from 0.1 to 1.9 (late); none: the plain mean")
    p.add_argument("--time-weight-lr", type=positive_float, default=None,
                   help="the outer step size of the per-step weights' logs (default: --meta-lr); larger lets "
                        "meta-training move them further")
    p.add_argument("--loss-outcome", choices=LOSS_OUTCOMES, default=d.loss_outcome,
                   help="the learned loss also reads, at every step, where the trajectory ended relative to the goal "
                        "(final-error; at meta-test: the real rollout's miss); none: only the step's own context")
    p.add_argument("--real-state-baseline", action="store_true",
                   help="also run the task loss through the learned model along each update's real rollout (real "
                        "states, the model's derivatives), tuned on train goals like the other baselines")
    p.add_argument("--horizon", type=positive_int, default=None, help="unroll/rollout length (default: the env's)")
    p.add_argument("--meta-restarts", type=positive_int, default=d.meta_restarts,
                   help="independent meta-trainings per seed, the best by --val-every's score on train goals kept")
    p.add_argument("--policy-reset-every", type=positive_int, default=d.policy_reset_every,
                   help="outer iterations each batch of meta-train policies lives (1: fresh every iteration)")
    p.add_argument("--random-amplitude-min", type=float, default=d.random_amplitude_min,
                   help="each random-action episode's torques scaled by U(this, 1) (1: full range)")
    p.add_argument("--relative-target", action="store_true",
                   help="the learned loss's target is the recorded action plus a learned change (default: absolute)")
    p.add_argument("--loss-on-pre-tanh", action="store_true",
                   help="the learned loss reads the policy's pre-tanh output (its gradient survives saturation)")
    p.add_argument("--task-loss-steps", type=positive_int, default=d.task_loss_steps,
                   help="meta-train task loss: mean distance over the unroll's last n states (1: final distance)")
    p.add_argument("--loss-form", choices=["quadratic", "free"], default=d.loss_form,
                   help="M_phi: a learned target and weight per action component (quadratic), or an ELU MLP of the "
                        "detached state features, the action and the goal (free, the authors' form)")
    p.add_argument("--policy-init", choices=["fresh", "fixed"], default=d.policy_init,
                   help="fresh policies, or one fixed draw per seed for meta-train, baselines and meta-test (authors')")
    p.add_argument("--final-speed-weight", type=float, default=d.final_speed_weight,
                   help="meta-train task loss adds this times the final speed |state[2:4]| (0: none)")
    p.add_argument("--minimiser-weight", type=float, default=d.minimiser_weight,
                   help="meta-train task loss adds this times the final distance of the learned loss's minimiser t(c) "
                        "unrolled in the model as a controller (quadratic form only; 0: none, Alg. 3 as written)")
    p.add_argument("--quick", action="store_true", help="a tiny version (about a minute): a smoke test")
    add_common(p)  # --resume: reuse the seeds finished in --out with these settings (mbrl_store)


def run(args: Any) -> dict[str, Any]:
    from sb3_ml3.experiments.store import prepare_out_dir

    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("n_outer", "test_updates", "model_every"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.alpha_max <= args.alpha_init:
        raise ValueError(f"--alpha-max must exceed the initial rate --alpha-init {args.alpha_init:g}, got "
                         f"{args.alpha_max:g}.")
    if not 0.0 <= args.random_amplitude_min <= 1.0:
        raise ValueError(f"--random-amplitude-min must lie in [0, 1], got {args.random_amplitude_min}.")
    config = MBRLConfig(horizon=args.horizon, inner_steps=args.inner_steps, meta_lr=args.meta_lr,
                        alpha_max=args.alpha_max, policy_reset_every=args.policy_reset_every,
                        random_amplitude_min=args.random_amplitude_min, relative_target=args.relative_target,
                        loss_on_pre_tanh=args.loss_on_pre_tanh, task_loss_steps=args.task_loss_steps,
                        final_speed_weight=args.final_speed_weight,
                        minimiser_weight=args.minimiser_weight, policy_init=args.policy_init, loss_form=args.loss_form,
                        alpha_init=args.alpha_init, inner_optimizer=args.inner_optimizer, adam_eps=args.adam_eps,
                        target_bound=args.target_bound, loss_features=args.loss_features,
                        loss_time_weights=args.loss_time_weights, time_weight_lr=args.time_weight_lr,
                        loss_outcome=args.loss_outcome, real_state_baseline=args.real_state_baseline,
                        policy_features=args.policy_features,
                        task_policy_features=tuple(args.task_policy_features or ()), val_every=args.val_every,
                        val_updates=args.val_updates, val_goals=args.val_goals or 0,
                        task_model_from=args.task_model_from, meta_restarts=args.meta_restarts, **settings)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    prepare_out_dir(args.out, resume=args.resume, force=args.force, extra_files=(SEEDS_DIR,))
    store = SeedStore(args.out, config, resume=args.resume, fresh=args.force)
    out = run_mbrl(args.envs, seeds, config, progress=not args.no_progress, store=store)
    results = out["results"]
    for (env_id, seed), meta_loss in out["meta_losses"].items():
        meta_loss.save(os.path.join(args.out, f"meta_loss_{env_id.split('-')[0]}_seed{seed}.zip"))
    results["figures"] = plot_mbrl(results, args.out)
    print(format_table(results))
    return results


__all__ = ["COMMAND", "HELP", "DESCRIPTION", "add_arguments", "run", "run_mbrl", "summarise", "format_table",
           "plot_mbrl", "reference_final_distances", "updates_to_reach"]
