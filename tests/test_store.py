"""Users' results are safe: the --out guard, atomic writes, validation up front, Ctrl-C keeps finished runs."""

import json
import os

import pytest

from sb3_ml3.cli import main as cli_main
from sb3_ml3.experiments.store import RunLog, atomic_write_json, prepare_out_dir

ENV = "PointmassGoal-v0"
QUICK = ["--quick", "--n-tasks", "2", "--meta-train-steps", "400", "--no-progress"]


def _cli_error(capsys, argv):
    """Run the CLI expecting a refusal; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    return exc.value.code, capsys.readouterr().err


def test_a_second_compare_into_the_same_out_is_refused_and_leaves_results_unchanged(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert cli_main(["compare", "ReacherGoal-v0", "--quick", "--algos", "ppo", "--out", out, "--no-progress"]) == 0
    path = os.path.join(out, "results.json")
    with open(path, "rb") as f:
        before = f.read()
    refs = json.loads(before)["references"]
    assert {"zero_action", "random", "best_constant_action", "oracle"} <= set(refs)
    code, err = _cli_error(capsys, ["compare", "ReacherGoal-v0", "--quick", "--algos", "ppo", "--out", out])
    assert code == 2 and "already holds results" in err and "--resume" in err and "--force" in err
    with open(path, "rb") as f:
        assert f.read() == before
    resumed = ["compare", "ReacherGoal-v0", "--quick", "--algos", "ppo", "--out", out, "--no-progress"]
    assert cli_main([*resumed, "--resume"]) == 0  # resume: allowed (the finished run is reused)
    assert cli_main([*resumed, "--force"]) == 0  # force: allowed
    code, err = _cli_error(capsys, [*resumed, "--force", "--resume"])
    assert code == 2 and "one of them" in err


@pytest.mark.parametrize("argv, message", [
    (["--timesteps", "0"], "positive integer"),
    (["--meta-train-steps", "-5"], "positive integer"),
    (["--n-tasks", "0"], "positive integer"),
    (["--net-archs", "0"], "positive"),
    (["--net-archs", "64,-3"], "positive"),
    (["--seeds", "-1"], "non-negative"),
    (["--threads", "0"], "positive integer"),
    (["--eval-every", "abc"], "positive integer"),
    (["--hyperparams", '{"ppo": {"n_epoch": 5}}'], "Unknown ppo settings"),
    (["--hyperparams", '{"compare": {"budget": 5}}'], "Unknown compare settings"),
    (["--hyperparams", "[1]"], "JSON object"),
])
def test_nonsense_numbers_exit_2_with_one_line_and_no_out(tmp_path, capsys, argv, message):
    out = str(tmp_path / "never")
    code, err = _cli_error(capsys, ["compare", ENV, "--out", out, *argv])
    assert code == 2 and message in err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]  # usage, then one error line
    assert not os.path.exists(out)  # nothing was created


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "Pendulum-v1"])
def test_unknown_or_goalless_env_names_the_goal_envs(tmp_path, capsys, env_id):
    out = str(tmp_path / "never")
    code, err = _cli_error(capsys, ["compare", env_id, "--quick", "--out", out])
    assert code == 2 and "not a registered goal env" in err and "ReacherGoal-v0" in err
    assert len(err.strip().splitlines()) == 1 and not os.path.exists(out)


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "results.json")
    atomic_write_json(path, {"old": 1})

    class Boom(Exception):
        pass

    def failing_fsync(fd):
        raise Boom("killed mid-write")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        atomic_write_json(path, {"new": 2})
    with open(path) as f:
        assert json.load(f) == {"old": 1}
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left behind


def test_meta_loss_and_ml3_saves_are_atomic(tmp_path, monkeypatch):
    import zipfile

    from sb3_ml3 import MetaLoss
    from sb3_ml3.ml3 import ML3

    loss = MetaLoss("y_pred:1, y_target:1")
    path = str(tmp_path / "loss.zip")
    loss.save(path)
    real_writestr = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        MetaLoss("y_pred:1, y_target:1", hidden_sizes=(3,)).save(path)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", real_writestr)
    assert MetaLoss.load(path).config() == loss.config()  # the earlier file is whole

    model = ML3("MlpPolicy", ENV, n_steps=16, batch_size=16, seed=0)
    model.save(str(tmp_path / "model"))
    assert os.path.isfile(tmp_path / "model.zip") and sorted(os.listdir(tmp_path)) == ["loss.zip", "model.zip"]
    ML3.load(str(tmp_path / "model.zip"))


def test_ctrl_c_writes_the_finished_runs_flagged_partial(tmp_path, monkeypatch):
    import sb3_ml3.experiments.compare as compare

    real_run = compare.run_one
    calls = []

    def interrupted_run(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(compare, "run_one", interrupted_run)
    out = str(tmp_path / "cmp")
    code = cli_main(["compare", ENV, *QUICK, "--algos", "ppo", "trpo", "--out", out])
    assert code == 130
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["partial"] and "interrupted" in results["interrupted"]
    assert [r["algo"] for r in results["runs"]] == ["ppo"] and "ppo [64,64]" in results["curves"]
    monkeypatch.setattr(compare, "run_one", real_run)  # --resume runs only what was missing
    assert cli_main(["compare", ENV, *QUICK, "--algos", "ppo", "trpo", "--out", out, "--resume"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert not results["partial"] and sorted(r["algo"] for r in results["runs"]) == ["ppo", "trpo"]


def test_sine_keeps_finished_seeds_on_ctrl_c(tmp_path, monkeypatch):
    from sb3_ml3.supervised.sine import SineExperiment

    real = SineExperiment.run_seed

    def run_seed(self, seed, progress=None):
        if seed == 1:
            raise KeyboardInterrupt
        return real(self, seed, progress=progress)

    monkeypatch.setattr(SineExperiment, "run_seed", run_seed)
    out = str(tmp_path / "sine")
    assert cli_main(["sine", "--seeds", "0", "1", "--n-outer", "3", "--test-steps", "2", "--out", out,
                     "--no-progress"]) == 130
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["partial"] and results["interrupted_at_seed"] == 1 and results["summary"]["seeds"] == [0]


def test_run_log_ignores_a_torn_last_line(tmp_path):
    log = RunLog(tmp_path, {"env": 1}, resume=False)
    log.add({"algo": "ppo", "net_arch": [8], "seed": 0, "task": None, "curve": [1.0]}, {"s": 1})
    with open(log.path, "a") as f:
        f.write('{"algo": "ppo", "net_ar')  # killed mid-append
    again = RunLog(tmp_path, {"env": 1}, resume=True)
    assert again.get("ppo", [8], 0, None, {"s": 1})[0]["curve"] == [1.0]
    with pytest.raises(ValueError, match="another env"):
        RunLog(tmp_path, {"env": 2}, resume=True)


def test_prepare_out_dir_refuses_results_unless_asked(tmp_path):
    prepare_out_dir(tmp_path / "new")  # an empty or missing folder is fine
    atomic_write_json(tmp_path / "new" / "results.json", {})
    with pytest.raises(ValueError, match="already holds results"):
        prepare_out_dir(tmp_path / "new")
    prepare_out_dir(tmp_path / "new", resume=True)
    prepare_out_dir(tmp_path / "new", force=True)
