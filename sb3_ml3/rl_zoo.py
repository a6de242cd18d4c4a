"""Train ML3 (and the baselines) with the RL Baselines3 Zoo: ``python -m sb3_ml3.rl_zoo ...``.

rl-zoo3 is optional (``pip install 'sb3-ml3[zoo]'``). This entry point adds ``"ml3": ML3`` to rl-zoo3's
``ALGOS``, registers the goal envs, and runs rl-zoo3's ``train`` with its usual flags. When no
``--conf-file`` is given it uses the hyperparameters shipped with this package for the algorithm
(``sb3_ml3/zoo/ml3.yml``, ``sb3_ml3/zoo/ppo.yml``: the goal envs, which rl-zoo3 itself lacks) and
falls back to rl-zoo3's own file for other algorithms::

    # meta-train a loss on PointmassGoal's train goals (saved as ml3_meta_loss_PointmassGoal-v0.zip)
    python -m sb3_ml3.rl_zoo --algo ml3 --env PointmassGoal-v0
    # meta-test it on the held-out goals
    python -m sb3_ml3.rl_zoo --algo ml3 --env PointmassGoal-v0 \\
        -params meta_train:False meta_loss:"'ml3_meta_loss_PointmassGoal-v0.zip'" --env-kwargs task_split:"'test'"
    # PPO on the same held-out goal region
    python -m sb3_ml3.rl_zoo --algo ppo --env PointmassGoal-v0

Note that rl-zoo3 evaluates with episode returns (``EvalCallback``); the paper's metric on fixed
held-out goals and the samples-to-80% table come from ``ml3 compare``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from stable_baselines3.common.callbacks import BaseCallback

ZOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")


def hyperparams_file(algo: str) -> str | None:
    """The shipped rl-zoo3 hyperparameter file of ``algo`` (``None`` if this package ships none)."""
    path = os.path.join(ZOO_DIR, f"{algo}.yml")
    return path if os.path.isfile(path) else None


def register() -> dict:
    """Add ML3 to rl-zoo3's ``ALGOS`` (idempotent) and register the goal envs; returns ``ALGOS``."""
    try:
        from rl_zoo3 import utils as zoo_utils
    except ImportError as exc:  # pragma: no cover - depends on the optional install
        raise ImportError("rl-zoo3 is not installed: pip install 'sb3-ml3[zoo]' (or pip install rl_zoo3).") from exc
    import sb3_ml3  # noqa: F401  (registers the envs)
    from sb3_ml3.ml3 import ML3

    zoo_utils.ALGOS.setdefault("ml3", ML3)
    return zoo_utils.ALGOS


def _algo_of(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--algo" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return "ppo"  # rl-zoo3's default


def main(argv: Sequence[str] | None = None) -> int:
    """rl-zoo3's ``train`` with ML3 registered and this package's hyperparameters by default."""
    register()
    from rl_zoo3.train import train

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("--conf-file", "-conf") or a.startswith("--conf-file=") for a in argv):
        path = hyperparams_file(_algo_of(argv))
        if path is not None:
            argv += ["--conf-file", path]
    if "--gym-packages" not in argv:
        argv += ["--gym-packages", "sb3_ml3"]  # also registers the envs in rl-zoo3's own imports
    saved = sys.argv
    sys.argv = ["sb3_ml3.rl_zoo", *argv]
    try:
        train()
    finally:
        sys.argv = saved
    return 0


class SaveMetaLossCallback(BaseCallback):
    """Saves an ML3 model's learned loss at the end of training (for rl-zoo3's ``callback:`` key).

    :param path: the file; default ``ml3_meta_loss_<env id>.zip`` in the working directory.
    """

    def __init__(self, path: str | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.path = path

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if not getattr(self.model, "meta_train", False):  # only a meta-trained loss is new
            return
        path = self.path
        if path is None:
            try:
                env_id = self.model.env.get_attr("spec")[0].id
            except (AttributeError, IndexError):
                env_id = "env"
            path = f"ml3_meta_loss_{env_id}.zip"
        self.model.save_meta_loss(path)
        if self.verbose:
            print(f"saved the learned loss to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
