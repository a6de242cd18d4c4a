"""Model-free ML3 meta-trained on several tasks per outer step (sb3_ml3.distributed.rl_trainer): one task in this
process is the single ML3 model's run step for step; 2 Ray workers give the in-process phi; a killed worker is
replaced without changing the run; a stopped run resumes from its checkpoint.

The Ray tests share one local Ray with 2 CPUs (module fixture); they are skipped where Ray is not installed.
"""

import pytest
import torch

from sb3_ml3.distributed.rl_shard import RLProblemSpec
from sb3_ml3.distributed.rl_trainer import meta_train_on_tasks
from sb3_ml3.experiments import meta_train_loss

ENV = "PointmassGoal-v0"
SETTINGS = {"n_envs": 2, "normalize": True, "meta_train_net_arch": [16, 16],
            "meta_train": dict(n_steps=32, batch_size=32, n_epochs=2, learning_rate=3e-3, meta_lr=1e-3,
                               policy_reset_interval=4, meta_loss_kwargs={"hidden_sizes": [8, 8]})}
ROLLOUT = 64  # n_steps x n_envs


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_one_task_in_this_process_is_the_single_model_meta_training():
    single, used_single = meta_train_loss(ENV, 3, 6 * ROLLOUT, SETTINGS)
    on_tasks, used, report = meta_train_on_tasks(ENV, 3, 6 * ROLLOUT, SETTINGS, tasks_per_step=1)
    initial = RLProblemSpec(ENV, 3, 1, SETTINGS, 6 * ROLLOUT).build_model(0).meta_loss
    assert used == used_single == 6 * ROLLOUT
    assert _max_diff(single, initial) > 1e-4  # phi moved: 5 outer steps (the first rollout has none)
    assert _max_diff(single, on_tasks) == 0.0
    assert report["outer_steps"] == 6 and report["tasks_per_step"] == 1


def test_two_ray_workers_give_the_in_process_meta_training(ray_local, tmp_path):
    local, used_local, _ = meta_train_on_tasks(ENV, 3, 12 * ROLLOUT, SETTINGS, tasks_per_step=2)
    one, _, _ = meta_train_on_tasks(ENV, 3, 6 * ROLLOUT, SETTINGS, tasks_per_step=1)
    path = tmp_path / "loss.zip"
    on_ray, used_ray, report = meta_train_on_tasks(ENV, 3, 12 * ROLLOUT, SETTINGS, tasks_per_step=2, workers=2,
                                                   path=path)
    assert used_local == used_ray == 12 * ROLLOUT
    assert _max_diff(local, on_ray) < 1e-6
    assert _max_diff(local, one) > 1e-5  # the second task's meta-gradient is in the average
    assert report["workers"] == 2 and report["bytes_from_workers"] > 2 * 4 * sum(p.numel() for p in local.parameters())
    saved = on_ray.metadata
    assert saved["meta_train_tasks_per_step"] == 2 and saved["distributed"]["workers"] == 2
    assert len(saved["obs_normalization"]["mean"]) == 6  # task 0's statistics travel with the loss


def test_killed_worker_is_replaced_and_the_run_is_unchanged(ray_local):
    killed = []

    def kill(trainer, iteration):
        if iteration == 2 and not killed:
            ray_local.kill(trainer.backend.actors[0], no_restart=True)
            killed.append(iteration)

    reference, _, _ = meta_train_on_tasks(ENV, 5, 12 * ROLLOUT, SETTINGS, tasks_per_step=2)
    phi, used, report = meta_train_on_tasks(ENV, 5, 12 * ROLLOUT, SETTINGS, tasks_per_step=2, workers=2, on_step=kill)
    assert killed == [2] and report["restarts"] == 1 and used == 12 * ROLLOUT
    assert _max_diff(reference, phi) < 1e-6  # rebuilt and replayed from the recorded phi: the same run


def test_a_stopped_run_resumes_from_its_checkpoint(tmp_path):
    checkpoint = tmp_path / "run.pt"
    at_stop = {}

    def stop(trainer, iteration):
        if iteration == 3:  # the checkpoint is written after outer step 3 (every 4 steps)
            at_stop.update({k: v.detach().clone() for k, v in trainer.meta_loss.state_dict().items()})
        if iteration == 4:
            raise KeyboardInterrupt

    kwargs = dict(tasks_per_step=2, checkpoint_path=checkpoint, checkpoint_every=8 * ROLLOUT)
    with pytest.raises(KeyboardInterrupt):
        meta_train_on_tasks(ENV, 3, 16 * ROLLOUT, SETTINGS, on_step=stop, **kwargs)
    assert checkpoint.exists()
    with pytest.raises(ValueError, match="other settings"):
        meta_train_on_tasks(ENV, 4, 16 * ROLLOUT, SETTINGS, **kwargs)  # another seed's run
    seen = []
    resumed, used, report = meta_train_on_tasks(
        ENV, 3, 16 * ROLLOUT, SETTINGS, on_step=lambda trainer, it: seen.append(
            {k: v.detach().clone() for k, v in trainer.meta_loss.state_dict().items()}), **kwargs)
    assert report["resumed_at_outer_step"] == 4 and report["steps"] == 4 and used == 16 * ROLLOUT
    # it continued from the checkpoint's phi (one Adam step away after its first outer step), and trained on
    first = seen[0]
    assert max((first[k] - at_stop[k]).abs().max().item() for k in first) < 3 * SETTINGS["meta_train"]["meta_lr"]
    assert all(torch.isfinite(p).all() for p in resumed.parameters())
    assert max((resumed.state_dict()[k] - at_stop[k]).abs().max().item() for k in at_stop) > 1e-4


def test_a_shard_restores_its_models_policies_and_pending_outer_steps():
    spec = RLProblemSpec(ENV, 1, 2, SETTINGS, 8 * ROLLOUT)
    shard = spec.make_shard([0, 1])
    phi = {k: v.detach() for k, v in shard.models[0].meta_loss.named_parameters()}
    for iteration in range(3):
        result = shard.step(phi, iteration)
    assert result.task_ids == [0, 1] and len(result.task_losses) == 2 and result.held == 2
    copy = spec.make_shard([0, 1])
    copy.load_state(shard.state())
    for i in (0, 1):
        a, b = shard.models[i], copy.models[i]
        assert b.has_pending_outer_step and b.num_timesteps == a.num_timesteps == 3 * ROLLOUT
        for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()):
            assert torch.equal(x, y)
        ra, rb = a.get_vec_normalize_env().obs_rms, b.get_vec_normalize_env().obs_rms
        assert rb.count == pytest.approx(ra.count + 2)  # the saved statistics, plus the reset's 2 observations
        assert abs(rb.mean - ra.mean).max() < 0.05
    # the restored tasks draw fresh rollouts with their saved policies and differentiate the pending update
    again = copy.step(phi, 3)
    assert again.task_ids == [0, 1] and all(torch.isfinite(g).all() for g in again.grad_sum.values())


def test_bad_settings_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="tasks per outer step"):
        meta_train_on_tasks(ENV, 0, 4 * ROLLOUT, SETTINGS, tasks_per_step=1, workers=2)
    bad = {**SETTINGS, "meta_train": {**SETTINGS["meta_train"], "meta_epochs": 2}}
    with pytest.raises(ValueError, match="meta_epochs=1"):
        meta_train_on_tasks(ENV, 0, 4 * ROLLOUT, bad, tasks_per_step=2)


def test_ml3_compare_meta_trains_on_several_tasks_per_outer_step(tmp_path, capsys):
    from sb3_ml3.cli import main as cli_main
    from sb3_ml3.meta_loss import MetaLoss

    out = tmp_path / "cmp"
    assert cli_main(["compare", ENV, "--quick", "--algos", "ml3", "--n-tasks", "2", "--meta-train-steps", "1600",
                     "--meta-tasks-per-step", "2", "--out", str(out), "--no-progress"]) == 0
    loss = MetaLoss.load(out / "meta_loss_seed0.zip")
    assert loss.metadata["meta_train_tasks_per_step"] == 2 and loss.metadata["distributed"]["workers"] == 0
    assert not list(out.glob("meta_train_seed0_checkpoint*"))  # removed once the loss is saved
    for args, message in ((["--workers", "3", "--meta-tasks-per-step", "2"], "at least as many"),
                          (["--address", "auto"], "give --workers")):
        with pytest.raises(SystemExit) as exc:
            cli_main(["compare", ENV, "--quick", "--out", str(tmp_path / "bad"), *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err
