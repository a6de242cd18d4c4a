"""ML3 beside PPO (and TRPO) on held-out goals, judged with the paper's metric (METRICS.md).

:func:`run_compare` is the drop-in comparison of the paper's Fig. 4. Every algorithm gets the
same env and held-out goals (``sample_tasks(env_id, n_tasks, "test", seed=TASK_SEED)``), the same
seeds, the same sample budget and the same initial policy per seed (:mod:`.runs`); each runs with
its own recipe (:mod:`.settings`: PPO and TRPO with rl-zoo3's observation and reward
normalisation). The table carries the reference policies (:mod:`.references`: zero, random, best
constant action, an oracle where cheap) and the behaviour of every final policy (:mod:`.report`).

Task modes: ``"distribution"`` (default) is one goal-conditioned run per (algorithm, seed) whose
training env draws goals from the **test** region, evaluated on the fixed held-out goals;
``"per_task"`` is the paper's protocol, one run per held-out goal with the env pinned to it.

An output folder holding results is refused unless ``resume`` or ``force``; finished runs are
logged as they end (:mod:`.store`), so Ctrl-C or a kill loses at most the run in progress, and
Ctrl-C returns the finished runs' results flagged ``"partial"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sb3_ml3.experiments.meta_train import losses_for_seeds, meta_train_fingerprint
from sb3_ml3.experiments.report import summarise, summary_table, write_csv, write_figures
from sb3_ml3.experiments.runs import EVAL_SEED, TASK_SEED, evaluation_schedule, run_one
from sb3_ml3.experiments.settings import (ALGOS, VF_ARCH, arch_key, check_hyperparams, load_recipe,
                                          parse_net_arch, settings_for)
from sb3_ml3.experiments.store import RunLog, atomic_write_json, jsonable, prepare_out_dir
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.metrics import THRESHOLDS

TASK_MODES = ("distribution", "per_task")


def check_goal_env(env_id: str) -> None:
    """Refuse an env id that is not one of the registered goal envs, naming them."""
    from sb3_ml3.envs import ENV_IDS

    if env_id not in ENV_IDS:
        raise ValueError(f"{env_id!r} is not a registered goal env; use one of {', '.join(ENV_IDS)}.")


def _positive(name: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def resolve_config(env_id: str, algos: Sequence[str], seeds: Sequence[int], n_tasks: int | None,
                   total_timesteps: int | None, eval_every: int | None, meta_train_steps: int | None,
                   net_archs: Sequence[Sequence[int] | str], hyperparams: Mapping[str, Any] | None,
                   task_mode: str, quick: bool) -> dict[str, Any]:
    """Validate every argument up front and fill in the recipe's defaults (nothing runs before this)."""
    check_goal_env(env_id)
    algos = list(dict.fromkeys(algos))
    if not algos or any(a not in ALGOS for a in algos):
        raise ValueError(f"algos must be a non-empty subset of {ALGOS}, got {list(algos)}.")
    if task_mode not in TASK_MODES:
        raise ValueError(f"task_mode must be one of {TASK_MODES}, got {task_mode!r}.")
    if not seeds or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds):
        raise ValueError(f"seeds must be one or more non-negative integers, got {list(seeds)}.")
    for name, value in (("total_timesteps", total_timesteps), ("eval_every", eval_every),
                        ("meta_train_steps", meta_train_steps), ("n_tasks", n_tasks)):
        _positive(name, value)
    hyperparams = check_hyperparams(hyperparams, env_id)
    recipe = load_recipe(env_id)
    budget = {**recipe["compare"], **(recipe["quick"] if quick else {}), **hyperparams.get("compare", {})}
    archs = [parse_net_arch(a) for a in net_archs]
    if not archs:
        raise ValueError("Give at least one net_arch, e.g. 64,64.")
    settings = {a: settings_for(a, env_id, hyperparams.get(a)) for a in algos}
    ml3 = settings.get("ml3") or settings_for("ml3", env_id, hyperparams.get("ml3"))
    config = {
        "env_id": env_id, "algos": algos, "seeds": [int(s) for s in seeds], "task_mode": task_mode, "quick": quick,
        "n_tasks": int(n_tasks or budget["n_tasks"]),
        "total_timesteps": int(total_timesteps or budget["total_timesteps"]),
        "eval_every": int(eval_every or budget["eval_every"]),
        "meta_train_steps": int(meta_train_steps or (recipe["quick"]["meta_train_timesteps"] if quick
                                                      else ml3["meta_train_timesteps"])),
        "net_archs": archs, "settings": settings, "ml3_settings": ml3,
    }
    if quick:
        config["n_tasks"] = min(config["n_tasks"], recipe["quick"]["n_tasks"])
    config["eval_dense"] = [int(budget.get("eval_dense_until", 0)), budget.get("eval_dense_every")]
    config["schedule"] = evaluation_schedule(config["total_timesteps"], config["eval_every"], *config["eval_dense"])
    return config


def _compute_references(env_id: str, goals: np.ndarray, env_kwargs: dict[str, Any] | None,
                        expert: str | os.PathLike | None) -> dict[str, Any]:
    from sb3_ml3.experiments.references import evaluate_references

    refs = dict(evaluate_references(env_id, goals, seed=EVAL_SEED, env_kwargs=env_kwargs))
    if expert is not None:
        from sb3_ml3.evaluation import evaluate_policy_on_goals
        from sb3_ml3.experiments.references import ExpertPolicy
        from sb3_ml3.experiments.runs import behaviour_summary

        summary = behaviour_summary(evaluate_policy_on_goals(ExpertPolicy(expert), env_id, goals, seed=EVAL_SEED,
                                                             env_kwargs=env_kwargs).to_dict())
        refs["expert"] = {**summary, "label": f"expert ({os.fspath(expert)})"}
    return refs


def _render(model: Any, env_id: str, goals: np.ndarray, out_dir: str, name: str, title: str,
            env_kwargs: dict[str, Any] | None, log: Any) -> str | None:
    from sb3_ml3.experiments.clips import RenderUnavailable, render_policy_clip

    try:
        return render_policy_clip(model, env_id, goals[:3], os.path.join(out_dir, name), seed=EVAL_SEED,
                                  vec_normalize=model.get_vec_normalize_env(), env_kwargs=env_kwargs, title=title)
    except RenderUnavailable as exc:
        log(f"no clip for {title}: {exc}")
        return None


def run_compare(
    env_id: str,
    algos: Sequence[str] = ("ml3", "ppo"),
    meta_loss: MetaLoss | str | os.PathLike | None = None,
    meta_train_steps: int | None = None,
    meta_train_samples: int | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n_tasks: int | None = None,
    total_timesteps: int | None = None,
    eval_every: int | None = None,
    net_archs: Sequence[Sequence[int] | str] = ((64, 64),),
    hyperparams: Mapping[str, Mapping[str, Any]] | None = None,
    task_mode: str = "distribution",
    env_kwargs: dict[str, Any] | None = None,
    quick: bool = False,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    render: bool = False,
    expert: str | os.PathLike | None = None,
    progress: bool = True,
    verbose: int = 1,
    meta_tasks_per_step: int = 1,
    meta_workers: int = 0,
    address: str | None = None,
) -> dict[str, Any]:
    """ML3 beside PPO (and TRPO) on ``n_tasks`` held-out goals; returns a JSON-ready result dict.

    :param meta_loss: ML3's loss: a :class:`MetaLoss`, a file, a path with ``{seed}`` (one file per
        seed), or ``None`` to meta-train one per seed on the train goals (``meta_train_steps``).
    :param meta_train_samples: meta-train env steps of a given loss whose file does not record them.
    :param n_tasks, total_timesteps, eval_every: default from the env's recipe (``compare``).
    :param net_archs: policy architectures; the same loss trains each (Fig. 4c-d).
    :param hyperparams: per-section overrides of the recipe, e.g. ``{"ppo": {"n_epochs": 5}}``.
    :param quick: the recipe's ``quick`` budgets, for smoke tests; explicit arguments still win.
    :param out_dir: where runs, losses and checkpoints are logged as they finish; refused if it holds
        results unless ``resume`` (continue it: reuse finished runs and losses, seeds/archs/algos may
        be added) or ``force`` (start afresh).
    :param render: write a GIF of each algorithm's final policy (first seed) on 3 held-out goals.
    :param expert: an SB3 model file shown as the "expert" reference (e.g. AntGoal's long-trained PPO).
    :param meta_tasks_per_step: when ML3's losses are meta-trained here, the ML3 models (own envs, policies and
        seeds) whose meta-gradients each outer step averages (a meta-training setting: part of the loss's
        fingerprint; ``meta_train_steps`` is the budget over all of them).
    :param meta_workers: Ray workers those tasks are spread over (0: this process; the same loss either way);
        ``address``: an existing Ray cluster (default: a local Ray).
    """
    if meta_tasks_per_step < 1 or not 0 <= meta_workers <= meta_tasks_per_step:
        raise ValueError(f"Need meta_tasks_per_step >= 1 and 0 <= meta_workers <= meta_tasks_per_step, got "
                         f"{meta_tasks_per_step} and {meta_workers}.")
    config = resolve_config(env_id, algos, seeds, n_tasks, total_timesteps, eval_every, meta_train_steps,
                            net_archs, hyperparams, task_mode, quick)
    if meta_tasks_per_step > 1:
        config["ml3_settings"] = dict(config["ml3_settings"], meta_train_tasks_per_step=int(meta_tasks_per_step))
    if (resume or force) and out_dir is None:
        raise ValueError("resume and force act on the comparison saved in out_dir: give out_dir.")
    if render and out_dir is None:
        raise ValueError("render writes clips into out_dir: give out_dir.")
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        prepare_out_dir(out_dir, resume=resume, force=force)
    log = print if verbose else (lambda *a, **k: None)
    start = time.time()
    from sb3_ml3.envs import sample_tasks

    goals = sample_tasks(env_id, config["n_tasks"], "test", seed=TASK_SEED)
    settings, schedule = config["settings"], config["schedule"]
    fingerprint = jsonable({k: config[k] for k in ("env_id", "n_tasks", "task_mode", "total_timesteps",
                                                     "eval_every", "quick")} | {"env_kwargs": env_kwargs or {}})
    if config["eval_dense"][0]:
        fingerprint["eval_dense"] = config["eval_dense"]
    run_log = RunLog(out_dir, fingerprint, resume) if out_dir is not None else None
    references = _compute_references(env_id, goals, env_kwargs, expert)
    run_fingerprints = {a: jsonable({"settings": settings[a]}) for a in config["algos"]}

    losses: dict[int, Any] = {}
    meta_train: dict[str, Any] = {}
    if "ml3" in config["algos"]:
        losses, meta_train = losses_for_seeds(
            env_id, config["seeds"], config["ml3_settings"], meta_loss, config["meta_train_steps"], meta_train_samples,
            env_kwargs=env_kwargs, out_dir=out_dir, run_log=run_log, resume=resume, progress=progress, log=log,
            workers=meta_workers, address=address)
        run_fingerprints["ml3"]["meta_loss"] = (
            meta_train_fingerprint(config["ml3_settings"], config["meta_train_steps"]) if meta_loss is None
            else "MetaLoss object" if isinstance(meta_loss, MetaLoss) else os.fspath(meta_loss))

    task_list = [None] if task_mode == "distribution" else list(range(len(goals)))
    jobs = [(arch, seed, task, algo) for arch in config["net_archs"] for seed in config["seeds"]
            for task in task_list for algo in config["algos"]]
    runs: list[dict[str, Any]] = []
    clips: list[str] = []
    interrupted = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs) * len(schedule), desc=f"{env_id}: {len(jobs)} runs", unit="eval")
    try:
        for net_arch, seed, task, algo in jobs:
            label = f"{algo} {arch_key(net_arch)} seed {seed}" + ("" if task is None else f" task {task}")
            finished, changed = ((None, False) if run_log is None
                                 else run_log.get(algo, net_arch, seed, task, run_fingerprints[algo]))
            if changed:
                log(f"  {label}: its settings changed, running it again")
            if finished is not None:
                runs.append(finished)
                if bar is not None:
                    bar.update(len(schedule))
                continue

            def on_eval(step: int, value: float, label: str = label) -> None:
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{label}: {value:.3g} @ {step}")

            want_clip = render and seed == config["seeds"][0] and task in (None, 0)
            record, model = run_one(env_id, algo, settings[algo], seed, net_arch, goals, schedule,
                                    config["total_timesteps"], task=task, meta_loss=losses.get(seed),
                                    env_kwargs=env_kwargs, on_eval=on_eval, keep_model=want_clip)
            runs.append(record)
            if run_log is not None:
                run_log.add(record, run_fingerprints[algo])
            if bar is None:
                log(f"  {label}: metric {record['curve'][0]:.3g} -> {record['curve'][-1]:.3g} "
                    f"({record['wall_time_s']:.0f}s)")
            if want_clip and model is not None:
                name = f"clip_{algo}_{'x'.join(map(str, net_arch)) or 'linear'}_seed{seed}.gif"
                clip = _render(model, env_id, goals, out_dir, name, f"{algo.upper()} {arch_key(net_arch)} seed {seed}",
                               env_kwargs, log)
                clips += [clip] if clip else []
    except KeyboardInterrupt:
        interrupted = f"interrupted by Ctrl-C after {len(runs)} of {len(jobs)} runs"
        log(f"\n{interrupted}: writing the finished runs' results (partial)")
    finally:
        if bar is not None:
            bar.close()

    curves, metrics, behaviour = summarise(runs, schedule, config["algos"], config["net_archs"], references,
                                           meta_train.get("samples"))
    results = jsonable({
        "env_id": env_id,
        "config": {
            "algos": config["algos"], "seeds": config["seeds"], "n_tasks": config["n_tasks"], "task_mode": task_mode,
            "total_timesteps": config["total_timesteps"], "eval_every": config["eval_every"], "quick": quick,
            "eval_dense_until_every": config["eval_dense"],
            "net_archs": config["net_archs"], "vf_arch": list(VF_ARCH), "task_seed": TASK_SEED,
            "eval_seed": EVAL_SEED, "env_kwargs": env_kwargs or {}, "settings": settings,
        },
        "partial": interrupted is not None,
        "tasks": goals.tolist(), "schedule": schedule, "references": references, "meta_train": meta_train,
        "runs": runs, "curves": curves, "metrics": metrics, "behaviour": behaviour,
        "thresholds": list(THRESHOLDS), "clips": clips, "run_time_s": round(time.time() - start, 2),
    })
    if interrupted is not None:
        results["interrupted"] = interrupted
    return results


def save_outputs(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything a comparison writes to ``out_dir``; adds ``table``, ``csv`` and ``figures`` to ``results``.

    ``results.json`` (the numbers) comes first and every file is written atomically, so a long run's
    numbers survive a failure while drawing and a kill never truncates an earlier copy.
    """
    out_dir = os.fspath(out_dir)
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    results["table"] = summary_table(results)
    results["csv"] = write_csv(results, os.path.join(out_dir, "compare_curves.csv"))
    results["figures"] = write_figures(results, out_dir) + list(results.get("clips", []))
    return results


DEMO_ENV = "ReacherGoal-v0"
#: the demo meta-tests on an architecture the loss never saw (it is meta-trained on [64, 64])
DEMO_NET_ARCH = (128, 128, 128)
DEMO = dict(seeds=(0, 1, 2))


def run_demo(quick: bool = False, out_dir: str | os.PathLike | None = None, seeds: Sequence[int] | None = None,
             progress: bool = True, verbose: int = 1, **overrides: Any) -> dict[str, Any]:
    """The README's main command: meta-train a loss on ReacherGoal's training goals, meta-test it on
    the held-out goals with a new policy architecture ([128, 128, 128]) beside the tuned PPO, with
    the reference policies in the table. ``quick``: one seed and tiny budgets."""
    kwargs: dict[str, Any] = dict(
        env_id=DEMO_ENV, algos=("ml3", "ppo"), net_archs=(DEMO_NET_ARCH,),
        seeds=tuple(seeds) if seeds is not None else ((0,) if quick else DEMO["seeds"]),
        quick=quick, out_dir=out_dir, progress=progress, verbose=verbose,
    )
    kwargs.update(overrides)
    return run_compare(**kwargs)


__all__ = ["DEMO_ENV", "DEMO_NET_ARCH", "TASK_MODES", "check_goal_env", "resolve_config", "run_compare", "run_demo",
           "save_outputs"]
