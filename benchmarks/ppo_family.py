"""ML3 with a meta-loss in PPO's family: meta-train its correction, meta-test it against PPO.

    python benchmarks/ppo_family.py meta-train --env ReacherGoal-v0 --out docs/results/ppo_family/r3 \
        --timesteps 300000 --correction free
    python benchmarks/ppo_family.py meta-test --env ReacherGoal-v0 --timesteps 100000 --seeds 0 1 2 \
        --out docs/results/ppo_family/metatest_r3.json --loss docs/results/ppo_family/r3/meta_loss_seed0.zip
    python benchmarks/ppo_family.py meta-test ... --loss fresh     # the family at zero correction (PPO's update)
    python benchmarks/ppo_family.py meta-test ... --loss ppo       # SB3's PPO, the env's recipe
    python benchmarks/ppo_family.py meta-test ... --split train --update auto   # choose among losses on train goals
    python benchmarks/ppo_family.py summary <result files>       # final, curve mean and behaviour per loss
    python benchmarks/ppo_family.py ratios <result files> --reference <PPO's result files>   # the speed ratios
    python benchmarks/ppo_family.py plot <result files> --out curves.png --reference -7.72 "best constant"

The loss is M = L_PPO(r, A) + C_phi (``MetaLoss(surrogate="ppo")``): PPO's clipped surrogate of the ratio
r = pi_theta(a|s) / pi_old(a|s) and the advantage A, plus a learned correction C_phi that starts at zero
(``--correction free``) or as a learned trust region (``penalty``); ``--drift`` lets the correction read
only A and log r. ML3's inner step is Adam with PPO's settings from the env's recipe (n_steps, batch,
epochs, learning rate; max_grad_norm 0.5; SB3's eps 1e-5), so that at zero correction ML3 takes PPO's
actor update. Meta-training (Algorithm 4) takes one outer step per rollout on the clipped REINFORCE task
loss of the next rollout, first-order through all the update's minibatch steps, with meta-validation on
train-split goals that includes the initial loss (``validate_at_start``). Meta-test trains fresh policies
on the held-out goals, evaluated on a dense grid, with the comparison's seeds, goals and initial policies.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from sb3_ml3 import MetaLoss, MetaLossSpecError
from sb3_ml3.envs import sample_tasks
from sb3_ml3.experiments import (PPO_FAMILY_INPUTS, TASK_SEED, atomic_write_json, evaluation_schedule, load_recipe,
                                 meta_train_loss, ppo_family_meta_train, ppo_family_settings, run_one)
from sb3_ml3.evaluation import evaluate_policy_on_goals
from sb3_ml3.experiments.meta_train import meta_train_fingerprint
from sb3_ml3.experiments.probes import PullSwitch, WarmLearningRate
from sb3_ml3.experiments.runs import EVAL_SEED, behaviour_summary
from sb3_ml3.ml3.meta_inputs import OPTIONAL_META_INPUTS
from sb3_ml3.surrogates import widen_target_context

def outside_goals(env_id: str, n: int, seed: int = TASK_SEED) -> np.ndarray:
    """``n`` goals of the env's "outside" split (radii outside the train and test splits' annulus): half on the ring
    inside it (drawn with ``seed``), half on the ring beyond it (``seed + 1``), the same goals in every report."""
    from sb3_ml3.envs import env_class
    from sb3_ml3.envs.tasks import OUTSIDE_SPLIT, sample_goals

    owner = env_class(env_id)
    if OUTSIDE_SPLIT not in owner.task_splits:
        raise SystemExit(f"{env_id} has no {OUTSIDE_SPLIT!r} split (goals outside both splits' radii); "
                         "ReacherGoal-v0 and PointmassGoal-v0 have one.")
    inner, outer = owner.build_task_regions()[OUTSIDE_SPLIT].regions
    return np.concatenate([sample_goals(inner, n // 2, seed), sample_goals(outer, n - n // 2, seed + 1)])


def meta_train(args: argparse.Namespace) -> None:
    meta_train_kwargs, n_envs = ppo_family_meta_train(args.env, args.correction, args.meta_lr,
                                                      args.policy_reset_interval, args.drift, args.update)
    meta_train_kwargs["compile_inner_step"] = args.compile
    meta_train_kwargs["meta_epochs"] = args.meta_epochs
    meta_train_kwargs["meta_inputs"] = list(meta_train_kwargs["meta_inputs"]) + args.extra_inputs
    for key, name in (("target_bound", "target_bound"), ("pull_updates", "pull_updates"),
                      ("pull_learning_rate", "pull_learning_rate"), ("target_context", "correction_fields")):
        if getattr(args, key) is not None:
            meta_train_kwargs["meta_loss_kwargs"][name] = getattr(args, key)
    meta_train_kwargs.update(args.ml3_kwargs)
    os.makedirs(args.out, exist_ok=True)
    if args.init_from is not None:  # continue from a loss, reading the extra inputs with zero weights at first
        meta_train_kwargs["meta_loss"] = init_loss_file(args, meta_train_kwargs)
        meta_train_kwargs.pop("meta_loss_kwargs")
    settings = {
        "n_envs": n_envs, "normalize": True, "meta_train_net_arch": [64, 64], "meta_train": meta_train_kwargs,
        "meta_validation": {"eval_freq": args.eval_freq, "eval_at_updates": args.eval_at_updates, "n_goals": 10,
                            "validate_at_start": True},
    }
    path = os.path.join(args.out, f"meta_loss_seed{args.seed}.zip")
    t0 = time.time()
    several = args.tasks_per_step > 1 or args.workers > 0  # the distributed trainer checkpoints to a .pt file
    loss, used = meta_train_loss(args.env, args.seed, args.timesteps, settings, path=path,
                                 checkpoint_path=path + (".ckpt.pt" if several else ".ckpt.zip"),
                                 checkpoint_every=args.eval_freq,
                                 fingerprint=meta_train_fingerprint(settings, args.timesteps),
                                 tasks_per_step=args.tasks_per_step, workers=args.workers, address=args.address)
    history = loss.metadata.get("meta_validation", {}).get("history")
    print(f"meta-trained {path}: {used} env steps (validation included), {time.time() - t0:.0f} s; "
          f"validation history {history}")


def derived_loss(source: str, inputs: list[str], target_bound: float | None = None,
                 pull_updates: int | None = None, pull_scale: float | None = None,
                 pull_learning_rate: float | None = None) -> MetaLoss:
    """The target loss in ``source`` reading ``inputs`` (new ones with zero weights, :func:`widen_target_context`),
    with its target bound, pull horizon, pull scale and pull learning rate set where given: the same learned
    weights, other fixed settings."""
    loss = MetaLoss.load(source)
    added = [name for name in inputs if name not in loss.spec.names]
    if [name for name in inputs if name in loss.spec.names] != list(loss.spec.names):
        raise SystemExit(f"{source} reads [{loss.spec}]: the inputs {inputs} must extend them.")
    if added:
        loss = widen_target_context(loss, [(name, 1) for name in added])
    changes = {key: value for key, value in (("target_bound", target_bound), ("pull_updates", pull_updates),
                                             ("pull_scale", pull_scale), ("pull_learning_rate", pull_learning_rate))
               if value is not None}
    if changes:
        loss = MetaLoss.from_config({**loss.config(), **changes}, loss.state_dict())
    loss.metadata["derived_from"] = {"file": os.path.basename(source), "added_inputs": added, **changes}
    return loss


def init_loss_file(args: argparse.Namespace, meta_train_kwargs: dict) -> str:
    """``--init-from``'s loss with the meta-train inputs and ``--target-bound`` (:func:`derived_loss`), in ``--out``."""
    loss = derived_loss(args.init_from, list(meta_train_kwargs["meta_inputs"]), args.target_bound, args.pull_updates,
                        pull_learning_rate=args.pull_learning_rate)
    loss.metadata["initialised_from"] = os.path.basename(args.init_from)
    path = os.path.join(args.out, f"init_meta_loss_seed{args.seed}.zip")
    loss.save(path)
    return path


def derive(args: argparse.Namespace) -> None:
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists: pass --force to overwrite it.")
    source = MetaLoss.load(args.loss)
    inputs = list(source.spec.names) + [name for name in args.extra_inputs if name not in source.spec.names]
    try:
        loss = derived_loss(args.loss, inputs, args.target_bound, args.pull_updates, args.pull_scale,
                            args.pull_learning_rate)
    except MetaLossSpecError as exc:
        raise SystemExit(str(exc)) from exc
    loss.save(args.out)
    print(f"{args.out}: {loss.spec}; target_bound {loss.target_bound}, pull_updates {loss.pull_updates}, "
          f"pull_scale {loss.pull_scale}, pull_learning_rate {loss.pull_learning_rate}")


def clip_path(clip_dir: str, name: str, seed: int) -> str:
    """Where ``--clip-dir`` puts the clip of loss (or ``ppo``/``fresh``) ``name`` trained with ``seed``."""
    return os.path.join(clip_dir, f"clip_{os.path.splitext(os.path.basename(name))[0]}_seed{seed}.gif")


def meta_test(args: argparse.Namespace) -> None:
    warm_lr = None
    if args.ppo_warm_lr is not None:  # (rate, whole count), checked once by the callback it configures
        rate, updates = args.ppo_warm_lr
        try:
            warm_lr = (rate, int(updates) if updates == int(updates) else updates)
            WarmLearningRate(*warm_lr)
        except (ValueError, OverflowError) as exc:
            raise SystemExit(f"--ppo-warm-lr needs a positive finite step size and a whole number of updates >= 1, got "
                             f"{rate:g} {updates:g} ({exc}).") from exc
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists: pass --force to overwrite it.")
    if args.clip_dir is not None and not args.force:
        taken = [path for name in args.loss for seed in args.seeds
                 if os.path.exists(path := clip_path(args.clip_dir, name, seed))]
        if taken:
            raise SystemExit(f"{taken[0]} exists: pass --force to overwrite the clips in {args.clip_dir}.")
    test, n_envs = ppo_family_settings(args.env, args.update)
    goals = (outside_goals(args.env, 10) if args.split == "outside"
             else np.asarray(sample_tasks(args.env, 10, args.split, seed=TASK_SEED)))
    dense = max(1, min(2_000, args.timesteps // 4))  # 2k steps, or finer for a smoke run
    schedule = evaluation_schedule(args.timesteps, 10_000, 20_000, dense)
    results = {"env_id": args.env, "split": args.split, "schedule": schedule, "runs": []}
    extra = outside_goals(args.env, args.outside_goals) if args.outside_goals else None
    keep = extra is not None or args.clip_dir is not None
    if extra is not None:
        results["outside_goals"] = extra.tolist()
    if args.references:  # METRICS.md's reference policies on the same goals and evaluation seeds
        from sb3_ml3.experiments.references import evaluate_references

        results["references"] = evaluate_references(args.env, goals, seed=EVAL_SEED)
        print("references: " + ", ".join(f"{name} {row['metric']:.2f} ({row['final_distance']:.3f} m)"
                                          for name, row in results["references"].items()), flush=True)
    for name in args.loss:
        for seed in args.seeds:
            t0 = time.time()
            if name == "ppo":
                recipe = {**load_recipe(args.env)["ppo"], **args.ppo_overrides}
                warm = [WarmLearningRate(*warm_lr)] if warm_lr else []  # a fresh one per run: it counts rollouts
                record, model = run_one(args.env, "ppo", recipe, seed, args.net_arch, goals,
                                        schedule, args.timesteps, keep_model=keep, split=args.split, callbacks=warm)
            else:
                test_kwargs = {**test, "compile_inner_step": args.compile, **args.ml3_overrides}
                settings = {"n_envs": n_envs, "normalize": True, "meta_test": test_kwargs}
                loss = fresh_loss(args.env) if name == "fresh" else name.format(seed=seed)
                probe = [PullSwitch(args.pull_until)] if args.pull_until is not None and name != "fresh" else []
                record, model = run_one(args.env, "ml3", settings, seed, args.net_arch, goals, schedule,
                                        args.timesteps, meta_loss=loss, keep_model=keep, split=args.split,
                                        callbacks=probe)
            if extra is not None:  # the final policy on goals outside both splits' radii
                record["behaviour_outside"] = behaviour_summary(evaluate_policy_on_goals(
                    model, args.env, extra, seed=EVAL_SEED, vec_normalize=model.get_vec_normalize_env()).to_dict())
            record["name"] = name if name != "ppo" or not args.ppo_overrides else f"ppo {json.dumps(args.ppo_overrides)}"
            if name == "ppo" and warm_lr:
                record["name"] += f" warm lr {warm_lr[0]:g} x{warm_lr[1]}"
            if args.pull_until is not None and name not in ("ppo", "fresh"):
                record["name"] = f"{name} pull until {args.pull_until}"
            if args.ml3_overrides and name != "ppo":
                record["name"] = f"{record['name']} {json.dumps(args.ml3_overrides)}"
            record["update"] = args.update
            if args.clip_dir is not None:  # look at the policy before believing its number
                from sb3_ml3.experiments.clips import render_policy_clip

                os.makedirs(args.clip_dir, exist_ok=True)
                stem = os.path.splitext(os.path.basename(name))[0]
                record["clip"] = render_policy_clip(
                    model, args.env, goals[:3], clip_path(args.clip_dir, name, seed), seed=EVAL_SEED,
                    vec_normalize=model.get_vec_normalize_env(),
                    title=f"{stem} seed {seed}, {model.num_timesteps // 1000}k")
            results["runs"].append(record)
            b = record["behaviour"]
            print(f"{name} seed {seed}: final {record['curve'][-1]:.2f}, distance {b['final_distance']:.3f}, "
                  f"success {b['success_rate']:.2f}, on bounds {b['saturation']:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
            if extra is not None:
                o = record["behaviour_outside"]
                print(f"  outside the splits' radii: distance {o['final_distance']:.3f}, success {o['success_rate']:.2f}, "
                      f"on bounds {o['saturation']:.3f}", flush=True)
            atomic_write_json(args.out, results)


def fresh_loss(env_id: str) -> MetaLoss:
    """The family at zero correction, with neutral observation statistics (VecNormalize then learns its own)."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs_dim, act = env.observation_space.shape[0], env.action_space.shape[0]
    goal = len(range(obs_dim)[env.unwrapped.goal_slice])
    spec = [("obs", obs_dim - goal), ("action", act), ("mean", act), ("std", act), ("goal", goal), ("advantage", 1),
            ("old_log_prob", 1)]
    return MetaLoss(spec, hidden_sizes=(40, 40), surrogate="ppo",
                    metadata={"obs_normalization": {"mean": [0.0] * obs_dim, "var": [1.0] * obs_dim, "count": 1e-4},
                              "meta_inputs": list(PPO_FAMILY_INPUTS), "inner_optimizer": "adam"})


def plot(args: argparse.Namespace) -> None:
    """Mean +- s.e. curves of each named run in the result files, with the env's reference policies."""
    from sb3_ml3.plotting import plot_curves

    curves: dict[str, list[list[float]]] = {}
    schedule: list[int] = []
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        schedule = data["schedule"]
        for run in data["runs"]:
            curves.setdefault(args.label.get(run["name"], run["name"]), []).append(run["curve"])
    plot_curves(args.out, schedule, curves, "meta-test env steps", "task metric on 10 held-out goals",
                args.title, hlines={name: float(value) for value, name in args.reference})


def summary(args: argparse.Namespace) -> None:
    """Per named run of the result files: the final metric (mean, s.d., per seed), the mean over the whole
    evaluation curve (speed and final together), and the final policies' behaviour; best final first."""
    rows: dict[str, list[dict]] = {}
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        for run in data["runs"]:  # runs of one name on one split's goals belong together
            rows.setdefault(f"{os.path.basename(run['name'])} [{data.get('split', 'test')}]", []).append(run)
    table = []
    for name, runs in rows.items():
        final = np.array([r["curve"][-1] for r in runs])
        table.append((float(final.mean()), name, final, float(np.mean([np.mean(r["curve"]) for r in runs])),
                      *(float(np.mean([r["behaviour"][k] for r in runs]))
                        for k in ("final_distance", "success_rate", "saturation"))))
    print(f"{'run':<60}{'final':>16}{'curve mean':>12}{'distance':>10}{'success':>9}{'bounds':>8}  per seed")
    for mean, name, final, curve, distance, success, bounds in sorted(table, key=lambda row: -row[0]):
        print(f"{name:<60}{mean:>9.4g} +- {final.std():<6.2g}{curve:>10.4g}{distance:>10.3f}"
              f"{success:>9.2f}{bounds:>8.3f}  {', '.join(f'{v:.4g}' for v in final)}")


def ratios(args: argparse.Namespace) -> None:
    """METRICS.md's samples to 50% and 80% of the way to PPO's plateau, and PPO's over the run's, per named run of
    the result files against PPO's runs (``--reference`` files) on the seeds both have, on the same schedule."""
    from sb3_ml3.metrics import compare_curves

    def curves(paths: list[str]) -> tuple[list[int], dict[str, dict[int, list[float]]]]:
        schedule, named = None, {}
        for path in paths:
            with open(path) as f:
                data = json.load(f)
            if schedule is not None and data["schedule"] != schedule:
                raise SystemExit(f"{path}: another evaluation schedule than the other files'.")
            schedule = data["schedule"]
            for run in data["runs"]:
                named.setdefault(os.path.basename(run["name"]), {})[int(run["seed"])] = run["curve"]
        return schedule, named

    x, reference = curves(args.reference)
    if args.reference_name not in reference:
        raise SystemExit(f"--reference must hold runs named {args.reference_name!r}; it has {sorted(reference)}.")
    reference["ppo"] = reference[args.reference_name]
    x_runs, named = curves(args.results)
    if x_runs != x:
        raise SystemExit("The result files and the reference have different evaluation schedules.")
    print(f"{'run':<60}{'seeds':>10}{'to 50%':>10}{'PPO':>9}{'ratio':>7}{'to 80%':>10}{'PPO':>9}{'ratio':>7}")
    for name, runs in named.items():
        seeds = sorted(set(runs) & set(reference["ppo"]))
        if not seeds:
            print(f"{name:<60} no seed in common with the reference")
            continue
        report = compare_curves(x, {"ppo": [reference["ppo"][s] for s in seeds], "ml3": [runs[s] for s in seeds]})
        cells = []
        for fraction in ("50%", "80%"):
            ours, ppo = (report["algorithms"][a]["samples_to"][fraction]["text"] for a in ("ml3", "ppo"))
            cells.append(f"{ours:>10}{ppo:>9}{report['ratio'][fraction]['text']:>7}")
        print(f"{name:<60}{','.join(map(str, seeds)):>10}{''.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("meta-train")
    train.add_argument("--env", default="ReacherGoal-v0")
    train.add_argument("--out", required=True)
    train.add_argument("--timesteps", type=int, default=300_000)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--correction", choices=["free", "penalty", "target"], default="free")
    train.add_argument("--drift", action="store_true", help="the correction reads only A and log r")
    train.add_argument("--meta-lr", type=float, default=1e-3)
    train.add_argument("--policy-reset-interval", type=int, default=60)
    train.add_argument("--meta-epochs", type=int, default=1,
                       help="outer steps per rollout, each on PPO's clipped surrogate of the task loss")
    train.add_argument("--ml3-kwargs", type=json.loads, default={},
                       help='JSON of further ML3 arguments, e.g. \'{"task_objective": "q_value", "task_critic": true}\'')
    train.add_argument("--extra-inputs", nargs="+", default=[],
                       choices=[name for name in OPTIONAL_META_INPUTS if name not in PPO_FAMILY_INPUTS],
                       help="further meta-loss inputs, e.g. policy_age (a target correction reads it by default) or "
                            "task_frame (the env's symmetry-reduced observation, e.g. ReacherGoal's arm frame)")
    train.add_argument("--target-context", nargs="+", default=None,
                       help="the inputs a target correction reads (default: obs, goal and policy_age where present), "
                            "e.g. task_frame policy_age: a target the same on every goal sector")
    train.add_argument("--target-bound", type=float, default=None,
                       help="a target correction's t = B tanh(.), inside the action box (1 for [-1, 1] actions)")
    train.add_argument("--pull-updates", type=int, default=None,
                       help="the target's pull acts on a policy's first K inner updates only (needs policy_age); "
                            "outer steps on older policies then have no gradient, so keep --policy-reset-interval near K")
    train.add_argument("--pull-learning-rate", type=float, default=None,
                       help="ML3's inner step size for the K pulled updates (needs --pull-updates); the outer step "
                            "differentiates that step")
    train.add_argument("--init-from", default=None,
                       help="start from this target-correction loss (new inputs read with zero weights at first)")
    train.add_argument("--eval-freq", type=int, default=100_000)
    train.add_argument("--eval-at-updates", type=int, nargs="+", default=[6, 12, 24])
    train.add_argument("--update", choices=["ppo", "separate"], default="ppo",
                       help="ML3's inner update: PPO's joint one (default) or the critic fitted separately")
    train.add_argument("--tasks-per-step", type=int, default=1,
                       help="ML3 models (own envs, policies, seeds) whose meta-gradients each outer step averages; "
                            "--timesteps is the budget over all of them")
    train.add_argument("--workers", type=int, default=0, help="Ray workers for those tasks (0: this process)")
    train.add_argument("--address", default=None, help="an existing Ray cluster (default: a local Ray)")
    test = sub.add_parser("meta-test")
    test.add_argument("--env", default="ReacherGoal-v0")
    test.add_argument("--out", required=True, help="results JSON")
    test.add_argument("--timesteps", type=int, default=100_000)
    test.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    test.add_argument("--loss", nargs="+", required=True, help="loss files ({seed} allowed), 'fresh' or 'ppo'")
    test.add_argument("--net-arch", type=int, nargs="+", default=[64, 64],
                      help="meta-test policy layers (a loss meta-trained on [64, 64] trains any architecture)")
    test.add_argument("--force", action="store_true")
    test.add_argument("--ppo-overrides", type=json.loads, default={},
                      help='JSON of changes to the recipe\'s PPO settings for --loss ppo, e.g. \'{"learning_rate": 1e-3}\' '
                           "(a probe of the update's speed; the runs are named after the change)")
    test.add_argument("--ppo-warm-lr", type=float, nargs=2, default=None, metavar=("RATE", "UPDATES"),
                      help="--loss ppo's first UPDATES updates at step size RATE, then the recipe's: the control for a "
                           "target loss's pull_learning_rate")
    test.add_argument("--ml3-overrides", type=json.loads, default={},
                      help='JSON of changes to ML3\'s inner-step settings (PPO\'s recipe by default), e.g. '
                           '\'{"learning_rate": 1e-3}\' (the runs are named after the change; state the PPO beside it)')
    test.add_argument("--pull-until", type=int, default=None,
                      help="a probe: turn a target loss's pull off from the first rollout that ends at or after this "
                           "many env steps, so that PPO's update carries on from there (the runs are named after it)")
    test.add_argument("--references", action="store_true",
                      help="also score the reference policies (zero, random, best constant action, oracle) on the goals")
    test.add_argument("--outside-goals", type=int, default=0,
                      help="also evaluate each final policy on this many goals outside both splits' radii")
    test.add_argument("--update", choices=["ppo", "separate", "auto"], default="ppo",
                      help="ML3's inner update: PPO's joint one (default), the critic fitted separately, or the one "
                           "each loss file records ('auto')")
    test.add_argument("--clip-dir", default=None,
                      help="also render each final policy on 3 of the goals into a GIF in this folder")
    test.add_argument("--split", choices=["test", "train", "outside"], default="test",
                      help="the goals trained and evaluated on: held-out (default), train-split ones (to choose "
                           "among candidate losses without looking at held-out goals), or 'outside': goals outside "
                           "both splits' radii (new policies trained there: does the loss carry over?)")
    for command in (train, test):
        command.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                             help="ML3's compile_inner_step (default on: these runs are long enough to repay it)")
    change = sub.add_parser("derive", help="a target loss with other fixed settings (same learned weights)")
    change.add_argument("loss")
    change.add_argument("--out", required=True, help="the new loss file")
    change.add_argument("--extra-inputs", nargs="+", default=[], choices=["policy_age"])
    change.add_argument("--target-bound", type=float, default=None, help="t = B tanh(the loss's raw target)")
    change.add_argument("--pull-updates", type=int, default=None,
                        help="the pull acts on a policy's first K inner updates only (needs policy_age)")
    change.add_argument("--pull-scale", type=float, default=None,
                        help="multiply the learned pull weight w(c) by this (how hard a new policy is pulled)")
    change.add_argument("--pull-learning-rate", type=float, default=None,
                        help="ML3's inner step size while the pull acts (needs pull_updates)")
    change.add_argument("--force", action="store_true")
    ratio = sub.add_parser("ratios", help="samples to 50%% / 80%% of PPO's plateau and PPO's ratio, per run")
    ratio.add_argument("results", nargs="+", help="meta-test result files")
    ratio.add_argument("--reference", nargs="+", required=True, help="result files with PPO's runs on the same seeds")
    ratio.add_argument("--reference-name", default="ppo",
                       help="the reference runs' name in those files, e.g. 'ppo warm lr 0.003 x5' (default: ppo)")
    figure = sub.add_parser("plot")
    figure.add_argument("results", nargs="+", help="meta-test result files")
    figure.add_argument("--out", required=True, help="PNG")
    figure.add_argument("--title", default="")
    figure.add_argument("--label", type=json.loads, default={}, help='JSON {"run name": "legend label"}')
    figure.add_argument("--reference", nargs=2, action="append", default=[], metavar=("VALUE", "NAME"))
    table = sub.add_parser("summary")
    table.add_argument("results", nargs="+", help="meta-test result files")
    args = parser.parse_args()
    if min(getattr(args, "timesteps", 1), 1) < 1:
        raise SystemExit("--timesteps must be positive")
    if getattr(args, "pull_until", None) is not None and args.pull_until < 0:
        raise SystemExit("--pull-until must be >= 0 env steps")
    if args.command == "meta-train" and (args.tasks_per_step < 1 or args.workers < 0
                                         or args.workers > args.tasks_per_step):
        raise SystemExit("Need --tasks-per-step >= 1 and 0 <= --workers <= --tasks-per-step.")
    {"meta-train": meta_train, "meta-test": meta_test, "derive": derive, "plot": plot, "summary": summary,
     "ratios": ratios}[args.command](args)


if __name__ == "__main__":
    main()
