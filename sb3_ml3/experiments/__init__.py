"""RL experiments: recipes, runs, meta-training, reference policies, run store and reports.

The library (``sb3_ml3.ml3``, ``sb3_ml3.meta_loss``, ...) never imports this package; the CLI, the
rl-zoo3 wrapper, the examples and the benchmarks do, through the names below.
"""

from sb3_ml3.experiments.compare import run_compare, run_demo, save_outputs
from sb3_ml3.experiments.meta_train import MetaTrainCheckpoint, losses_for_seeds, meta_train_loss
from sb3_ml3.experiments.runs import (EVAL_SEED, TASK_SEED, TaskMetricCallback, build_model, evaluation_schedule,
                                      initial_policy_state, load_initial_policy, make_train_env, run_one)
from sb3_ml3.experiments.settings import (PPO_FAMILY_INPUTS, arch_key, load_recipe, parse_net_arch,
                                          policy_kwargs_for, ppo_family_meta_train, ppo_family_settings,
                                          recipe_env_ids, settings_for)
from sb3_ml3.experiments.store import atomic_write_json, prepare_out_dir

__all__ = [
    "EVAL_SEED",
    "MetaTrainCheckpoint",
    "TASK_SEED",
    "TaskMetricCallback",
    "arch_key",
    "atomic_write_json",
    "build_model",
    "evaluation_schedule",
    "initial_policy_state",
    "load_initial_policy",
    "load_recipe",
    "PPO_FAMILY_INPUTS",
    "ppo_family_meta_train",
    "ppo_family_settings",
    "losses_for_seeds",
    "make_train_env",
    "meta_train_loss",
    "parse_net_arch",
    "policy_kwargs_for",
    "prepare_out_dir",
    "recipe_env_ids",
    "run_compare",
    "run_demo",
    "run_one",
    "save_outputs",
    "settings_for",
]
