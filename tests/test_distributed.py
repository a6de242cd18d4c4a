"""Distributed meta-training (sb3_ml3.distributed): the same meta-gradients on 2 Ray workers as in one process,
a killed worker is replaced without changing the run, a stopped run resumes exactly from its checkpoint.

The Ray tests share one local Ray with 2 CPUs (module fixture); they are skipped where Ray is not installed.
"""

import json
import os

import pytest
import torch

from sb3_ml3.cli import main as cli_main
from sb3_ml3.distributed.shard import TaskShard, split_tasks, task_generator
from sb3_ml3.distributed.sine import sine_problem
from sb3_ml3.distributed.trainer import DistributedMetaTrainer
from sb3_ml3.functional import meta_gradient
from sb3_ml3.supervised.sine import SineConfig, make_meta_loss, sine_task

CONFIG = SineConfig(hidden_sizes=(16, 16), meta_hidden_sizes=(16, 16), n_points=20, reset_every=3, inner_lr=0.05,
                    meta_lr=3e-3, eval_every=0)


def _spec(n_tasks=3, seed=0, config=CONFIG):
    task = sine_task(1.0, 3.14159, config.n_points, config.input_range, torch.Generator().manual_seed(seed))
    return sine_problem(config, seed, n_tasks, task.support, task.query)


def _meta_loss(seed=0):
    return make_meta_loss(CONFIG, torch.Generator().manual_seed(100 + seed))


def _phi(meta_loss):
    return {k: v.detach().clone() for k, v in meta_loss.named_parameters()}


def _run(workers, n_outer=6, progress=None, **kwargs):
    meta_loss = _meta_loss()
    with DistributedMetaTrainer(meta_loss, _spec(), CONFIG.meta_lr, workers=workers, checkpoint_every=2,
                                **kwargs) as trainer:
        result = trainer.fit(n_outer, progress=(lambda it: progress(trainer, it)) if progress else None)
        return _phi(meta_loss), result, trainer.report()


def test_split_tasks_covers_every_task_once_and_refuses_idle_workers():
    assert split_tasks(5, 2) == [[0, 1, 2], [3, 4]]
    assert sorted(i for s in split_tasks(7, 3) for i in s) == list(range(7))
    with pytest.raises(ValueError, match="--tasks-per-step"):
        split_tasks(2, 3)
    a, b = task_generator(0, 1), task_generator(0, 1)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert not torch.equal(torch.rand(3, generator=task_generator(0, 2)), torch.rand(3, generator=task_generator(1, 1)))


def test_mean_over_shards_is_the_mean_of_per_task_meta_gradients():
    # uneven shares (2 + 1): the driver must weight by task count, not average the shards' means
    spec, meta_loss = _spec(3), _meta_loss()
    phi = _phi(meta_loss)
    shards = [TaskShard(spec, ids) for ids in split_tasks(3, 2)]
    results = [s.step(phi, 0) for s in shards]
    combined = {k: sum(r.grad_sum[k] for r in results) / 3 for k in phi}
    parts = spec.build()
    expected = {k: torch.zeros_like(v) for k, v in phi.items()}
    for i in range(3):  # each task on its own, from its own generator
        g = task_generator(spec.seed, i)
        batch, query = parts.task_data(i, g)
        grads, _ = meta_gradient(parts.learned_loss, parts.task_loss, parts.init_params(g), phi, batch, query,
                                 spec.inner_lr)
        expected = {k: expected[k] + grads[k] / 3 for k in phi}
    for k in phi:
        torch.testing.assert_close(combined[k], expected[k], rtol=1e-5, atol=1e-8)
    assert max(v.abs().max().item() for v in combined.values()) > 1e-4  # a real, non-zero meta-gradient


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    path = tmp_path / "ckpt.pt"
    reference, ref_result, _ = _run(0, n_outer=7)

    def stop_at_4(trainer, iteration):
        if iteration == 4:
            raise KeyboardInterrupt  # the last checkpoint was written after step 3 (every 2 steps)

    with pytest.raises(KeyboardInterrupt):
        _run(0, n_outer=7, progress=stop_at_4, checkpoint_path=path)
    meta_loss = _meta_loss()
    with DistributedMetaTrainer(meta_loss, _spec(), CONFIG.meta_lr, checkpoint_every=2, checkpoint_path=path) as trainer:
        result = trainer.fit(7, resume=True)
        assert len(trainer.times.wall_s) == 3  # only steps 4, 5, 6 were computed again
    for k, v in _phi(meta_loss).items():
        torch.testing.assert_close(v, reference[k], rtol=0, atol=0)
    assert result.task_loss == ref_result.task_loss
    other = _spec(config=SineConfig(**{**CONFIG.__dict__, "inner_lr": 0.01}))
    with DistributedMetaTrainer(_meta_loss(), other, CONFIG.meta_lr, checkpoint_path=path) as trainer:
        with pytest.raises(ValueError, match="inner_lr"):
            trainer.fit(7, resume=True)


def test_two_ray_workers_give_the_single_process_meta_gradients(ray_local):
    spec, meta_loss = _spec(3), _meta_loss()
    with DistributedMetaTrainer(meta_loss, spec, CONFIG.meta_lr, workers=0) as local, \
            DistributedMetaTrainer(meta_loss, spec, CONFIG.meta_lr, workers=2) as remote:
        for iteration in range(4):  # across a reset (reset_every=3): the workers keep their optimizees
            g_local, losses_local, _ = local.meta_gradient(iteration)
            g_remote, losses_remote, shards = remote.meta_gradient(iteration)
            assert [r.task_ids for r in shards] == [[0, 1], [2]]
            for k in g_local:
                torch.testing.assert_close(g_remote[k], g_local[k], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(losses_remote, losses_local)
        assert remote.report()["bytes_from_workers"] > 0


def test_killed_worker_is_restarted_and_the_run_is_unchanged(ray_local, tmp_path):
    reference, ref_result, _ = _run(0, n_outer=6)
    killed = []

    def kill(trainer, iteration):
        if iteration == 2:  # its replacement loads the snapshot taken after step 1 and replays step 2
            ray_local.kill(trainer.backend.actors[0], no_restart=True)
            killed.append(iteration)

    phi, result, report = _run(2, n_outer=6, progress=kill, checkpoint_path=tmp_path / "c.pt")
    assert killed == [2] and report["restarts"] == 1
    for k in reference:
        torch.testing.assert_close(phi[k], reference[k], rtol=1e-5, atol=1e-7)
    assert result.task_loss == pytest.approx(ref_result.task_loss, rel=1e-5)
    # the checkpoint of the 2-worker run resumes in one process (task states are keyed by task, not worker)
    meta_loss = _meta_loss()
    with DistributedMetaTrainer(meta_loss, _spec(), CONFIG.meta_lr, checkpoint_every=2,
                                checkpoint_path=tmp_path / "c.pt") as trainer:
        trainer.fit(8, resume=True)
    longer, _, _ = _run(0, n_outer=8)
    for k in longer:
        torch.testing.assert_close(_phi(meta_loss)[k], longer[k], rtol=1e-5, atol=1e-7)


def test_cli_sine_on_two_workers_writes_the_usual_files(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sine", "--out", str(out), "--seeds", "0", "--n-outer", "4", "--test-steps", "3", "--no-progress",
            "--workers", "2", "--tasks-per-step", "2", "--checkpoint-every", "2"]
    assert cli_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["distributed"]["workers"] == 2 and results["distributed"]["tasks_per_step"] == 2
    assert len(results["per_seed"][0]["meta_train_task_loss"]) == 4
    assert os.path.exists(out / "meta_loss_seed0.zip") and os.path.exists(out / "checkpoints" / "sine_seed0.pt")
    with pytest.raises(SystemExit) as refused:
        cli_main(args)  # results there: refused without --resume/--force
    assert refused.value.code == 2
    base = ["sine", "--out", str(tmp_path / "bad"), "--no-progress"]
    for bad, message in ((["--workers", "3", "--tasks-per-step", "2"], "--tasks-per-step 3"),
                         (["--resume"], "add --workers"),
                         (["--workers", "0", "--address", "auto"], "--workers N >= 1")):
        with pytest.raises(SystemExit):
            cli_main(base + bad)
        assert message in capsys.readouterr().err


def _nan_query_parts(config, batch, query):
    """The sine problem, but task 1's query targets are NaN: its task loss (and the mean) is never finite."""
    from sb3_ml3.distributed.sine import build_sine_parts

    parts = build_sine_parts(config, batch, query)
    poisoned = (query[0], torch.full_like(query[1], float("nan")))
    return parts._replace(task_data=lambda i, g: (batch, poisoned if i == 1 else query))


def test_non_finite_meta_gradient_never_reaches_phi():
    import dataclasses
    import functools

    spec = _spec(3)
    task = sine_task(1.0, 3.14159, CONFIG.n_points, CONFIG.input_range, torch.Generator().manual_seed(0))
    spec = dataclasses.replace(spec, build=functools.partial(_nan_query_parts, CONFIG, task.support, task.query))
    meta_loss = _meta_loss()
    before = _phi(meta_loss)
    with DistributedMetaTrainer(meta_loss, spec, CONFIG.meta_lr) as trainer:
        result = trainer.fit(3)
    assert result.skipped_steps == 3 and "non-finite" in result.skipped_reasons[0]
    for k, v in _phi(meta_loss).items():
        assert torch.equal(v, before[k])
