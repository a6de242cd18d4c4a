"""ml3 compare / ml3 demo end to end, and the fairness of the comparison (same initial policies)."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from sb3_ml3.cli import main as cli_main
from sb3_ml3.experiments import (
    TaskMetricCallback,
    build_model,
    evaluation_schedule,
    initial_policy_state,
    load_initial_policy,
    make_train_env,
    meta_train_loss,
    run_compare,
    settings_for,
)

ENV = "PointmassGoal-v0"


def _read(out):
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(out, "compare_curves.csv")) as f:
        rows = list(csv.DictReader(f))
    return results, rows


def test_cli_compare_quick_writes_json_csv_png_and_table(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert cli_main(["compare", ENV, "--quick", "--algos", "ml3", "ppo", "trpo", "--net-archs", "64,64", "32",
                     "--n-tasks", "2", "--meta-train-steps", "400", "--out", out, "--no-progress"]) == 0
    results, rows = _read(out)
    printed = capsys.readouterr().out
    assert "ratio PPO/ML3" in printed and "break-even" in printed and "to 80%" in printed
    schedule = results["schedule"]
    assert schedule[0] == 0 and schedule[-1] == results["config"]["total_timesteps"] and len(schedule) >= 4
    assert len(results["runs"]) == 3 * 2  # algos x archs, one seed
    for run in results["runs"]:
        assert len(run["curve"]) == len(schedule) and len(run["per_goal"]) == results["config"]["n_tasks"]
        assert run["timesteps"] >= results["config"]["total_timesteps"]
    # every algorithm starts from the same initial policy per seed and arch; PPO and TRPO also see the
    # same normalised observations (their VecNormalize statistics come from the same first reset)
    for arch in ([64, 64], [32]):
        starts = {r["algo"]: np.asarray(r["per_goal"])[:, 0] for r in results["runs"] if r["net_arch"] == arch}
        np.testing.assert_array_equal(starts["ppo"], starts["trpo"])
    assert results["config"]["settings"]["ppo"]["normalize"] is True  # rl-zoo3's normalize: true
    assert results["config"]["settings"]["ml3"]["normalize"] is False
    # the reference policies of METRICS.md, on the same held-out goals
    refs = results["references"]
    assert {"zero_action", "random", "best_constant_action", "oracle"} <= set(refs)
    assert refs["oracle"]["metric"] > refs["best_constant_action"]["metric"] >= refs["zero_action"]["metric"]
    for run in results["runs"]:  # behaviour beside every number
        b = run["behaviour"]
        assert 0 <= b["saturation"] <= 1 and 0 <= b["success_rate"] <= 1 and b["final_distance"] >= 0
    assert "best constant action" in printed and "oracle" in printed
    report = results["metrics"]["[64,64]"]
    assert set(report["algorithms"]) == {"ml3", "ppo", "trpo"} and "m_ref" in report
    assert results["meta_train"]["samples"] == 400 and os.path.isfile(os.path.join(out, "meta_loss_seed0.zip"))
    assert len(rows) == len(results["runs"]) * results["config"]["n_tasks"] * len(schedule)
    for name in ("learning_curves_64x64.png", "learning_curves_32.png", "architecture_transfer.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000, name


def test_cli_compare_reuses_a_meta_loss_file_per_task(tmp_path):
    path = str(tmp_path / "loss.zip")
    meta_train_loss(ENV, 0, 400, path=path)
    out = str(tmp_path / "cmp")
    assert cli_main(["compare", ENV, "--meta-loss", path, "--task-mode", "per_task", "--n-tasks", "2",
                     "--timesteps", "1024", "--eval-every", "256", "--seeds", "0", "--out", out, "--no-progress"]) == 0
    results, rows = _read(out)
    assert results["meta_train"]["given"] and results["meta_train"]["samples"] == 400
    assert [r["task"] for r in results["runs"]] == [0, 0, 1, 1]  # one run per held-out goal
    assert {r["task"] for r in rows} == {"0", "1"}


def test_cli_demo_quick(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert cli_main(["demo", "--quick", "--out", out, "--no-progress"]) == 0
    results, _ = _read(out)
    assert results["env_id"] == "ReacherGoal-v0"
    assert results["config"]["net_archs"] == [[128, 128, 128]]
    assert results["meta_train"]["net_arch"] == [64, 64]  # meta-test on an architecture the loss never saw
    assert os.path.getsize(os.path.join(out, "learning_curves.png")) > 1000
    assert "ReacherGoal-v0, policy [128,128,128]" in capsys.readouterr().out


@pytest.mark.parametrize("net_arch", [[64, 64], [16, 16, 16]])
def test_ml3_ppo_trpo_start_from_the_same_policy(net_arch):
    meta_loss, _ = meta_train_loss(ENV, 0, 400)
    actions = {}
    for algo in ("ml3", "ppo", "trpo"):
        settings = settings_for(algo, ENV)
        env = make_train_env(ENV, settings["n_envs"], seed=3)  # raw observations: the same inputs for all
        model = build_model(algo, env, 3, settings, net_arch, meta_loss)
        load_initial_policy(model, initial_policy_state(env, 3, net_arch))
        obs = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
        actions[algo] = model.predict(obs, deterministic=True)[0]
        with torch.no_grad():
            actions[algo + "_value"] = model.policy.predict_values(torch.as_tensor(obs)).numpy()
    np.testing.assert_array_equal(actions["ml3"], actions["ppo"])
    np.testing.assert_array_equal(actions["trpo"], actions["ppo"])
    np.testing.assert_array_equal(actions["ml3_value"], actions["ppo_value"])
    assert np.abs(actions["ppo"]).max() > 0


def test_callback_evaluates_on_schedule_before_any_update():
    settings = settings_for("ppo", ENV)
    env = make_train_env(ENV, settings["n_envs"], seed=0)
    model = build_model("ppo", env, 0, settings, [16], None)
    goals = np.array([[-1.0, 0.5], [-0.8, -1.2]])
    callback = TaskMetricCallback(ENV, goals, [0, 200, 512, 700])
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(600, callback=callback)
    values = callback.finish()
    assert values.shape == (4, 2)
    # one rollout is 8 x 64 = 512 steps: the points at 0 and 200 see the initial policy
    np.testing.assert_array_equal(values[0], values[1])
    fresh = build_model("ppo", make_train_env(ENV, 8, seed=0), 0, settings, [16], None)
    fresh.policy.load_state_dict(before)
    from sb3_ml3.evaluation import evaluate_task_metric

    np.testing.assert_array_equal(values[0], evaluate_task_metric(fresh, ENV, goals, seed=callback.eval_seed))


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fewer than 4 points"):
        evaluation_schedule(1000, 500)
    with pytest.raises(ValueError, match="algos"):
        run_compare(ENV, algos=("ml3", "sac"), quick=True)
    with pytest.raises(ValueError, match="hyperparams"):
        run_compare(ENV, hyperparams={"sac": {}}, quick=True)
    with pytest.raises(ValueError, match="Unknown ppo settings"):
        run_compare(ENV, hyperparams={"ppo": {"n_epoch": 5}}, quick=True)
    with pytest.raises(ValueError, match="not a registered goal env"):
        run_compare("Pendulum-v1", quick=True)
    with pytest.raises(SystemExit) as exc:
        cli_main(["compare", ENV, "--quick", "--hyperparams", "{not json", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_compare_resumes_an_interrupted_run(tmp_path, monkeypatch):
    import sb3_ml3.experiments.compare as compare
    import sb3_ml3.experiments.meta_train as meta_train
    import sb3_ml3.experiments.runs as runs
    from sb3_ml3.experiments.store import RUNS_FILE

    out = str(tmp_path / "cmp")
    kwargs = dict(algos=["ml3", "ppo"], seeds=[0], net_archs=["16", "8"], quick=True, progress=False, verbose=0)
    full = compare.run_compare(ENV, out_dir=out, **kwargs)
    log = os.path.join(out, RUNS_FILE)
    with open(log) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 + 1 + 4  # header, the meta-loss meta-trained, one line per finished run
    with open(log, "w") as f:  # interrupted during the last run
        f.write("\n".join(lines[:-1]) + "\n")

    built = []
    real_build = runs.build_model
    monkeypatch.setattr(runs, "build_model", lambda algo, *a, **k: built.append(algo) or real_build(algo, *a, **k))
    monkeypatch.setattr(meta_train, "meta_train_loss", lambda *a, **k: pytest.fail("the saved meta-loss must be reused"))
    resumed = compare.run_compare(ENV, out_dir=out, resume=True, **kwargs)
    assert built == ["ppo"]  # only the unfinished run ran again
    assert resumed["curves"] == full["curves"] and resumed["metrics"] == full["metrics"]

    built.clear()  # adding an algorithm to a finished comparison runs only its runs
    extended = compare.run_compare(ENV, out_dir=out, resume=True, **dict(kwargs, algos=["ml3", "ppo", "trpo"]))
    assert built == ["trpo", "trpo"]
    assert extended["curves"]["ppo [16]"] == full["curves"]["ppo [16]"] and "trpo [8]" in extended["curves"]

    built.clear()  # a new ML3 meta-test recipe reruns ML3's runs only, with the saved losses
    retuned = compare.run_compare(ENV, out_dir=out, resume=True, hyperparams={"ml3": {"meta_test": {"learning_rate": 1e-2}}},
                                  **kwargs)
    assert built == ["ml3", "ml3"]
    assert retuned["curves"]["ppo [8]"] == full["curves"]["ppo [8]"]
    assert retuned["curves"]["ml3 [8]"] != full["curves"]["ml3 [8]"]
    built.clear()  # and going back reruns them once more: a run is reused only with the settings it ran with
    again = compare.run_compare(ENV, out_dir=out, resume=True, **kwargs)
    assert built == ["ml3", "ml3"] and again["curves"] == full["curves"]

    with pytest.raises(ValueError, match="meta-trained with other ML3 settings"):  # a saved loss is never reused blindly
        compare.run_compare(ENV, out_dir=out, resume=True, hyperparams={"ml3": {"meta_train": {"meta_lr": 1e-2}}}, **kwargs)
    with pytest.raises(ValueError, match="evaluation schedule"):
        compare.run_compare(ENV, out_dir=out, resume=True, eval_every=256, **kwargs)
    with pytest.raises(ValueError, match="give out_dir"):
        compare.run_compare(ENV, resume=True, **kwargs)


def test_an_interrupted_meta_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A meta-training killed mid-way continues from its last checkpoint: phi, Adam state, validation."""
    from sb3_ml3.experiments import MetaTrainCheckpoint
    from sb3_ml3.ml3 import ML3, MetaValidationCallback

    settings = settings_for("ml3", ENV, {"meta_validation": {"eval_freq": 400, "eval_at_updates": [1], "n_goals": 2}})
    checkpoint = str(tmp_path / "ckpt.zip")
    real_validate = MetaValidationCallback.validate
    calls = []

    def crashing_validate(self):
        calls.append(self.num_timesteps)
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped")
        return real_validate(self)

    monkeypatch.setattr(MetaValidationCallback, "validate", crashing_validate)
    with pytest.raises(KeyboardInterrupt):
        meta_train_loss(ENV, 0, 2_000, settings, checkpoint_path=checkpoint, fingerprint={"recipe": 1})
    state = MetaTrainCheckpoint.read(checkpoint)
    assert state is not None and state["num_timesteps"] == 800  # saved after each of the two validations
    assert [t for t, _ in state["history"]] == [400, 800] and state["best_state"] is not None
    saved = ML3.load(checkpoint)
    assert saved.num_timesteps == 800 and saved.meta_optimizer.state  # phi's Adam state travels with it

    monkeypatch.setattr(MetaValidationCallback, "validate", real_validate)
    with pytest.raises(ValueError, match="other ML3 settings"):
        meta_train_loss(ENV, 0, 2_000, settings, checkpoint_path=checkpoint, fingerprint={"recipe": 2})
    loss, used = meta_train_loss(ENV, 0, 2_000, settings, checkpoint_path=checkpoint, fingerprint={"recipe": 1})
    history = loss.metadata["meta_validation"]["history"]
    assert [t for t, _ in history][:2] == [400, 800] and history[:2] == [tuple(h) for h in state["history"]]
    assert history[-1][0] == 2_000 and loss.metadata["resumed_at_timesteps"] == 800
    assert used == 2_000 + loss.metadata["meta_validation"]["validation_timesteps"]
    assert not os.path.exists(checkpoint) and not os.path.exists(checkpoint + ".json")  # finished: removed

    with open(checkpoint, "w") as f:
        f.write("x")
    with open(checkpoint + ".json", "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        meta_train_loss(ENV, 0, 2_000, settings, checkpoint_path=checkpoint)


def test_a_frozen_meta_test_stops_early_with_the_same_curve():
    """stop_when_frozen skips the env steps after max_policy_updates; the curve is the full run's."""
    from sb3_ml3.ml3 import ML3

    settings = settings_for("ml3", ENV)
    settings["meta_test"].update(n_steps=16, batch_size=32, max_policy_updates=2)
    meta_inputs = settings["meta_test"]["meta_inputs"]
    loss = ML3("MlpPolicy", make_train_env(ENV, 2, seed=0), meta_train=True, seed=0, meta_inputs=meta_inputs).meta_loss
    goals = np.array([[-1.0, 0.5], [-0.8, -1.2]])
    schedule = [0, 128, 256, 512, 1024, 2048]
    curves, models, callbacks = [], [], []
    for stop in (False, True):
        env = make_train_env(ENV, 8, seed=0)
        model = build_model("ml3", env, 0, settings, [16], loss)
        callback = TaskMetricCallback(ENV, goals, schedule, stop_when_frozen=stop)
        model.learn(2048, callback=callback)
        curves.append(callback.finish())
        models.append(model)
        callbacks.append(callback)
    np.testing.assert_array_equal(curves[0], curves[1])
    assert not np.allclose(curves[0][0], curves[0][-1])  # the policy did learn before it froze
    assert callbacks[0].stopped_at is None and models[0].num_timesteps == 2048
    # two rollouts of 8 x 16 steps and their updates, then the first step (8 envs) of the third rollout
    assert callbacks[1].stopped_at == models[1].num_timesteps == 2 * 128 + 8


def test_a_given_loss_is_fed_the_inputs_it_was_meta_trained_on(tmp_path):
    """A saved loss from another recipe (other meta_inputs than the env's default) meta-tests as it was trained."""
    from sb3_ml3.ml3 import ML3

    settings = settings_for("ml3", ENV)
    assert settings["meta_test"]["meta_inputs"] != ("obs", "mean", "std", "goal")
    trainer = ML3("MlpPolicy", make_train_env(ENV, 2, seed=0), meta_train=True, seed=0,
                  meta_inputs=("obs", "mean", "std", "goal"), meta_loss_kwargs={"quadratic": ["mean"]})
    path = str(tmp_path / "other_recipe.zip")
    trainer.save_meta_loss(path)
    model = build_model("ml3", make_train_env(ENV, 2, seed=0), 0, settings, [16], path)
    assert model.meta_inputs == ("obs", "mean", "std", "goal") and model.meta_loss.quadratic == ("mean",)
    model.learn(2 * settings["meta_test"]["n_steps"] * 2)  # and it trains with it
