"""Per-seed results of ``ml3 mbrl`` in ``OUT/seeds``: a long run survives a kill, and seeds run apart combine.

One seed of the reacher's five-seed run takes 13-20 minutes on a CPU core, and ``results.json`` is written only
when every requested seed is done. So each finished seed is also written on its own, as soon as it finishes:
``seeds/<env>_seed<n>.json`` (the settings and the seed's row of results) and ``seeds/<env>_seed<n>.zip`` (its
meta-loss, :meth:`~.mbrl_nets.LossAndRate.save`), both atomically, the loss first. With ``--resume`` a seed whose
files exist is read back instead of run again, but only if it ran with exactly the current settings; anything
else is refused with the settings that differ, as is resuming into a folder whose ``results.json`` has other
settings (it would be replaced at the end). Two processes given different ``--seeds`` and one ``--out`` (both
with ``--resume``) therefore fill one folder, and a last ``--resume`` call with every seed writes the combined
``results.json`` and figures without training anything (it lists those seeds under ``seeds_read_back``, with
their own wall times; its ``wall_time_s`` is that call's).
"""

from __future__ import annotations

import json
import os
from typing import Any

from sb3_ml3.atomic import jsonable
from sb3_ml3.experiments.store import atomic_write_json
from sb3_ml3.model_based.mbrl_config import MBRLConfig, config_dict, config_from_dict
from sb3_ml3.model_based.mbrl_nets import LossAndRate

#: the folder inside ``--out`` that holds one JSON row and one meta-loss per finished seed
SEEDS_DIR = "seeds"


def _normalised(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists), so a saved and a current config compare equal."""
    return json.loads(json.dumps(jsonable(value)))


class SeedStore:
    """The finished seeds of one ``ml3 mbrl`` output folder (module docstring).

    :param out_dir: the run's ``--out``.
    :param config: the settings of the current run; a stored seed is reused only if it ran with the same.
    :param resume: read finished seeds back (``--resume``); without it every requested seed runs.
    :param fresh: remove the stored seeds first (``--force``: start afresh).
    """

    def __init__(self, out_dir: str | os.PathLike, config: MBRLConfig, resume: bool, fresh: bool = False) -> None:
        self.dir = os.path.join(os.fspath(out_dir), SEEDS_DIR)
        self.config = _normalised(config_dict(config))
        self.resume = bool(resume)
        if self.resume:
            self._check_results(os.path.join(os.fspath(out_dir), "results.json"))
        if fresh and os.path.isdir(self.dir):
            for name in os.listdir(self.dir):
                if name.endswith((".json", ".zip")):
                    os.remove(os.path.join(self.dir, name))

    def _differ(self, saved_config: dict[str, Any]) -> list[str]:
        """The settings in which ``saved_config`` differs from this run's. A setting the saved config lacks (added
        to MBRLConfig after it was written) counts as its default, which is what that run used."""
        defaults = _normalised(config_dict(MBRLConfig()))
        return sorted(k for k in set(saved_config) | set(self.config)
                      if saved_config.get(k, defaults.get(k)) != self.config.get(k))

    def _check_results(self, path: str) -> None:
        """Refuse to resume over a ``results.json`` made with other settings (it would be replaced at the end)."""
        if not os.path.exists(path):
            return
        try:
            with open(path) as f:
                saved_config = json.load(f)["config"]
            differ = self._differ(saved_config)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a results.json of ml3 mbrl ({exc}); choose another --out, or --force to "
                             "replace it.") from None
        if differ:
            raise ValueError(f"{path} holds results of other settings ({', '.join(differ)} differ); resume with the "
                             "same flags, or choose another --out (or --force to replace them).")

    def paths(self, env_id: str, seed: int) -> tuple[str, str]:
        """``(row JSON, meta-loss zip)`` of one env and seed."""
        return self.paths_in(os.path.dirname(self.dir), env_id, seed)

    @staticmethod
    def paths_in(out_dir: str | os.PathLike, env_id: str, seed: int) -> tuple[str, str]:
        """``(row JSON, meta-loss zip)`` of one env and seed in the output folder ``out_dir``."""
        stem = os.path.join(os.fspath(out_dir), SEEDS_DIR, f"{env_id.split('-')[0]}_seed{int(seed)}")
        return stem + ".json", stem + ".zip"

    def load(self, env_id: str, seed: int) -> tuple[dict[str, Any], LossAndRate] | None:
        """The stored row and meta-loss of ``(env_id, seed)``; None when not resuming or not stored yet."""
        row_path, loss_path = self.paths(env_id, seed)
        if not self.resume or not os.path.exists(row_path):
            return None
        try:
            with open(row_path) as f:
                saved = json.load(f)
            row = saved["row"]
            if saved["env_id"] != env_id or int(saved["seed"]) != int(seed) or not isinstance(row, dict):
                raise ValueError("it names another env or seed")
            differ = self._differ(saved["config"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{row_path} is not a finished seed of ml3 mbrl ({exc}); move it away to run that "
                             "seed again.") from None
        if differ:
            raise ValueError(f"{row_path} ran with other settings ({', '.join(differ)} differ); resume with the "
                             "same flags, or choose another --out (or --force to start afresh).")
        if not os.path.exists(loss_path):
            raise ValueError(f"{row_path} has no meta-loss beside it ({loss_path}); move the JSON away to run that "
                             "seed again.")
        return row, LossAndRate.load(loss_path)

    def save(self, env_id: str, seed: int, row: dict[str, Any], meta_loss: LossAndRate) -> None:
        """Write one finished seed: the meta-loss, then the row (whose presence means both are whole)."""
        row_path, loss_path = self.paths(env_id, seed)
        os.makedirs(self.dir, exist_ok=True)
        meta_loss.save(loss_path)
        atomic_write_json(row_path, {"env_id": env_id, "seed": int(seed), "config": self.config, "row": row})


def read_seed(out_dir: str | os.PathLike, env_id: str, seed: int) -> tuple[MBRLConfig, dict[str, Any], LossAndRate]:
    """One finished seed of an ``ml3 mbrl`` folder as its settings, its row of results and its meta-loss, whatever
    the current flags (for analysis: :class:`SeedStore` reads a seed back only under the settings it ran with)."""
    row_path, loss_path = SeedStore.paths_in(out_dir, env_id, seed)
    if not os.path.exists(row_path) or not os.path.exists(loss_path):
        raise FileNotFoundError(f"{out_dir} holds no finished seed {seed} of {env_id} ({row_path} and {loss_path}).")
    try:
        with open(row_path) as f:
            saved = json.load(f)
        if saved["env_id"] != env_id or int(saved["seed"]) != int(seed) or not isinstance(saved["row"], dict):
            raise ValueError("it names another env or seed")
        config = config_from_dict(saved["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{row_path} is not a finished seed of ml3 mbrl ({exc}).") from None
    return config, saved["row"], LossAndRate.load(loss_path)


__all__ = ["SEEDS_DIR", "SeedStore", "read_seed"]
