"""Model-free ML3 learns: a meta-trained loss trains fresh policies on unseen goals (CI-sized).

Meta-train on PointmassGoal-v0's training goals (right half-plane), then train new policies on the
test goals (left half-plane) with the frozen loss -- one with the meta-training architecture and one
it never saw -- and compare with a randomly initialised meta-loss of the same form. The metric is
the paper's: minus the final distance to the goal, deterministic policy, 10 fixed test goals.
"""

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env

from sb3_ml3 import ML3
from sb3_ml3.envs import sample_tasks
from sb3_ml3.evaluation import evaluate_task_metric

ENV = "PointmassGoal-v0"
RECIPE = dict(n_steps=50, batch_size=100, n_epochs=1, learning_rate=3e-2, max_grad_norm=1.0,
              meta_inputs=("obs", "action", "mean", "std", "goal", "advantage"))


def _meta_test(meta_loss, net_arch, goals, steps=10_000):
    env = make_vec_env(ENV, n_envs=8, seed=1, env_kwargs={"task_split": "test"})
    model = ML3("MlpPolicy", env, meta_loss=meta_loss, seed=1, policy_kwargs={"net_arch": net_arch}, **RECIPE)
    before = evaluate_task_metric(model, ENV, goals).mean()
    model.learn(steps)
    return before, evaluate_task_metric(model, ENV, goals).mean()


@pytest.mark.slow
def test_meta_trained_loss_beats_a_random_loss_on_unseen_goals_and_architectures(tmp_path):
    env = make_vec_env(ENV, n_envs=8, seed=0, env_kwargs={"task_split": "train"})
    meta = ML3("MlpPolicy", env, meta_train=True, seed=0, meta_lr=3e-3, policy_reset_interval=25, **RECIPE)
    meta.learn(200_000)
    assert meta.skipped_meta_steps == 0 and meta.n_meta_updates > 400
    path = tmp_path / "pointmass_loss.zip"
    meta.save_meta_loss(path)

    goals = sample_tasks(ENV, 10, "test", seed=100)
    assert (goals[:, 0] < 0).all()  # unseen: the loss never saw a goal with x < 0
    start, learned = _meta_test(str(path), [64, 64], goals)
    _, learned_new_arch = _meta_test(str(path), [128, 128, 128], goals)
    _, random_loss = _meta_test(None, [64, 64], goals)
    # measured (seed 0, 2-core CPU): start -1.41, learned -0.76, new architecture -0.80, random loss -2.51
    print(f"start {start:.3f} learned {learned:.3f} new arch {learned_new_arch:.3f} random {random_loss:.3f}")
    assert learned > start + 0.3, (start, learned)
    assert learned > random_loss + 0.5, (learned, random_loss)
    assert learned_new_arch > random_loss + 0.5, (learned_new_arch, random_loss)
    assert np.isfinite([learned, learned_new_arch, random_loss]).all()
