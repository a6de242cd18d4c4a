"""ML3's model files: JSON and tensors only, so that loading a file never runs code from it.

SB3's ``save`` writes a ``data`` member whose spaces, schedules and classes are cloudpickled, and its
``load`` unpickles them: a crafted file runs code. An ML3 file is a zip archive with

* ``ml3.json``: format version, the constructor's settings, the spaces (``Box`` bounds), the counters,
  the meta-loss architecture and the goal slice;
* one ``<name>.pth`` per network or optimizer state dict (policy, critics, meta-loss, their optimisers);
* ``state.pt``: the rollout state (last observations and episode starts) and the pending outer step
  (theta before the last inner update, its minibatches, step size and inner-optimizer state), so that a
  resumed meta-training makes the outer step an uninterrupted one makes.

Every tensor file is read with ``torch.load(weights_only=True)``; classes in ``policy_kwargs`` are stored
by name and resolved only within ``torch.nn`` and ``torch.optim``. Loading builds the model through the
constructor, so it checks what the constructor checks (e.g. ``batch_size`` against a new env's rollout),
and refuses non-finite weights.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import zipfile
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.utils import check_for_correct_spaces
from torch import nn

from sb3_ml3.atomic import atomic_path
from sb3_ml3.ml3.loss_files import save_meta_loss
from sb3_ml3.traced import InnerTrace

if TYPE_CHECKING:
    from sb3_ml3.ml3.ml3 import ML3

FORMAT = "sb3-ml3 ML3 model"
FORMAT_VERSION = 1
_JSON = "ml3.json"
_STATE = "state.pt"
#: counters and flags restored as they were saved
_COUNTERS = ("num_timesteps", "_total_timesteps", "_num_timesteps_at_start", "_episode_num", "_n_updates",
             "_current_progress_remaining", "_n_meta_updates", "_n_iterations", "_n_policy_updates",
             "_actor_age", "skipped_meta_steps", "skipped_inner_steps")
#: constructor arguments that are not stored as settings
_NOT_SETTINGS = ("self", "policy", "env", "meta_loss", "device", "_init_setup_model", "expert")
#: settings stored under another attribute name
_ATTRIBUTE = {"stats_window_size": "_stats_window_size"}
_CLASS_MODULES = {"torch.nn": nn, "torch.optim": torch.optim}


class ModelFileError(ValueError):
    """An ML3 model file is damaged, crafted, from another format, or does not fit the setting."""


# ---------------------------------------------------------------------------------------------- JSON parts
def space_to_json(space: spaces.Space) -> dict[str, Any]:
    if not isinstance(space, spaces.Box):
        raise ModelFileError(f"ML3 files store Box spaces only, got {space}.")
    def bounds(values: np.ndarray) -> list[Any]:  # JSON has no infinity: unbounded ends are "inf" / "-inf"
        return [float(v) if np.isfinite(v) else str(float(v)) for v in values.reshape(-1).tolist()]

    return {"type": "Box", "low": bounds(space.low), "high": bounds(space.high), "shape": list(space.shape),
            "dtype": str(space.dtype)}


def space_from_json(data: Any, source: str) -> spaces.Box:
    try:
        if data["type"] != "Box":
            raise ModelFileError(f"{source}: unknown space type {data['type']!r}.")
        dtype = np.dtype(data["dtype"])
        if dtype.kind != "f":
            raise ModelFileError(f"{source}: a Box of dtype {dtype} is not ML3's.")
        shape = tuple(int(n) for n in data["shape"])
        low = np.asarray([float(v) for v in data["low"]], dtype=dtype).reshape(shape)
        high = np.asarray([float(v) for v in data["high"]], dtype=dtype).reshape(shape)
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{source}: the stored space is malformed ({error}).") from error


def _value_to_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_value_to_json(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _value_to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, type):
        for prefix, module in _CLASS_MODULES.items():
            if getattr(module, value.__name__, None) is value:
                return {":class:": f"{prefix}.{value.__name__}"}
    if isinstance(value, np.generic):
        return value.item()
    raise ModelFileError(
        f"ML3 files hold JSON only and cannot store {where} = {value!r}; use numbers, strings, lists and classes "
        "from torch.nn or torch.optim (e.g. activation_fn=torch.nn.Tanh)."
    )


def _value_from_json(value: Any, source: str) -> Any:
    if isinstance(value, list):
        return [_value_from_json(v, source) for v in value]
    if isinstance(value, dict):
        if set(value) == {":class:"}:
            prefix, _, name = str(value[":class:"]).rpartition(".")
            module = _CLASS_MODULES.get(prefix)
            cls = getattr(module, name, None) if module is not None and not name.startswith("_") else None
            if not isinstance(cls, type):
                raise ModelFileError(f"{source}: refusing the class {value[':class:']!r} (only torch.nn and torch.optim).")
            return cls
        return {k: _value_from_json(v, source) for k, v in value.items()}
    return value


def _settings(model: "ML3") -> dict[str, Any]:
    names = [n for n in inspect.signature(type(model).__init__).parameters if n not in _NOT_SETTINGS]
    settings = {}
    for name in names:
        value = getattr(model, _ATTRIBUTE.get(name, name))
        if name == "learning_rate" and callable(value):
            value = float(model.lr_schedule(1))  # a schedule is code: its starting value is kept, and said so
            settings["learning_rate_was_schedule"] = True
        settings[name] = _value_to_json(value, name)
    return settings


# ---------------------------------------------------------------------------------------------- save
def save_model(model: "ML3", path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` (``.zip`` appended when missing), atomically."""
    path = os.fspath(path)
    if not path.endswith(".zip"):
        path += ".zip"
    expert = model.expert
    document = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "class": type(model).__name__,
        "settings": _settings(model),
        "expert": os.fspath(expert) if isinstance(expert, (str, os.PathLike)) else None,
        # an expert object (or the stand-in for one a file could not hold) is asked for again on load
        "expert_object": expert is not None and not isinstance(expert, (str, os.PathLike)),
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "n_envs": int(model.n_envs),
        "goal_slice": None if model.goal_slice is None else [model.goal_slice.start, model.goal_slice.stop],
        "task_frame_dim": model.task_frame_dim,
        "counters": {name: _value_to_json(getattr(model, name), name) for name in _COUNTERS},
        "meta_loss": model.meta_loss.config(),
        "state_dicts": model.state_dict_names(),
    }
    state: dict[str, Any] = {"episode_t": torch.as_tensor(model.rollout_buffer._episode_t)}
    if model._last_obs is not None and isinstance(model._last_obs, np.ndarray):
        state["last_obs"] = torch.as_tensor(model._last_obs)
        state["last_episode_starts"] = torch.as_tensor(np.asarray(model._last_episode_starts))
    if model._pending is not None:
        params, minibatches, inner_lr, optimizer_state = model._pending
        state["pending"] = {"params": params, "minibatches": minibatches, "inner_lr": float(inner_lr),
                            "optimizer_state": None if optimizer_state is None else list(optimizer_state)}
        if model._trace is not None:
            state["pending"]["trace"] = model._trace.to_dict()
    text = json.dumps(document, indent=2, allow_nan=False)
    with atomic_path(path, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(_JSON, text)
        for name in document["state_dicts"]:
            zf.writestr(f"{name}.pth", _tensor_bytes(_attribute(model, name).state_dict()))
        zf.writestr(_STATE, _tensor_bytes(state))


def _tensor_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _attribute(model: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        model = getattr(model, part)
    return model


# ---------------------------------------------------------------------------------------------- load
def load_model(cls: type["ML3"], path: str | os.PathLike, env: Any = None, device: torch.device | str = "auto",
               force_reset: bool = True, **overrides: Any) -> "ML3":
    """Rebuild an ML3 model from ``path``; ``overrides`` replace saved settings (e.g. ``expert=``).

    ``force_reset=False`` with the env the model was training on continues its episodes where they were
    (the saved last observations), as an uninterrupted run would; by default the env is reset, as SB3 does.
    """
    from sb3_ml3.ml3.ml3 import _UnsavedExpert

    source = os.fspath(path)
    if not os.path.isfile(source) and os.path.isfile(source + ".zip"):
        source += ".zip"
    if not os.path.isfile(source):
        raise FileNotFoundError(f"No ML3 model file at {source!r}.")
    try:
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())
            if _JSON not in names:
                hint = (" It looks like a file written by SB3's save (an older sb3-ml3 or another algorithm), whose "
                        "'data' member is unpickled on load, which can run code; ML3 does not read it. Re-create "
                        "the model, or load it with the version that wrote it and save it again."
                        if "data" in names else "")
                raise ModelFileError(f"{source!r} is not an ML3 model file (no {_JSON}).{hint}")
            document = json.loads(zf.read(_JSON).decode("utf-8"))
            blobs = {name: zf.read(name) for name in names if name.endswith((".pth", ".pt"))}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, json.JSONDecodeError, OSError) as error:
        raise ModelFileError(f"Cannot read ML3 model file {source!r}: it is corrupted ({error}).") from error
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{source!r}: format {document.get('format')!r} version "
                             f"{document.get('format_version')!r} is not an ML3 model this sb3-ml3 reads.")
    try:
        settings = {k: _value_from_json(v, source) for k, v in document["settings"].items()}
        observation_space = space_from_json(document["observation_space"], source)
        action_space = space_from_json(document["action_space"], source)
        counters, state_dicts = document["counters"], list(document["state_dicts"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(f"{source!r}: the model description lacks or mangles {error}.") from error
    was_schedule = settings.pop("learning_rate_was_schedule", False)
    if was_schedule and "learning_rate" not in overrides:
        raise ModelFileError(f"{source!r} was trained with a learning-rate schedule, which a file cannot hold: "
                             "pass learning_rate=... (a float or a schedule) to ML3.load.")
    if document.get("expert") is not None:
        settings["expert"] = document["expert"]
    elif document.get("expert_object"):
        settings["expert"] = _UnsavedExpert()
    settings.update(overrides)
    if isinstance(settings.get("meta_inputs"), list):
        settings["meta_inputs"] = tuple(settings["meta_inputs"])
    unknown = [k for k in settings if k not in inspect.signature(cls.__init__).parameters]
    if unknown:
        raise ModelFileError(f"{source!r}: unknown settings {unknown} (a newer or a crafted file).")
    if env is not None:
        env = cls._wrap_env(env, verbose=0)
        check_for_correct_spaces(env, observation_space, action_space)
    model = cls("MlpPolicy", env, device=device, _init_setup_model=False, **settings)
    if env is None:
        model.observation_space, model.action_space = observation_space, action_space
        model.n_envs = _count(document.get("n_envs", 1), "n_envs", source)
        goal = document.get("goal_slice")
        if goal is not None and not (isinstance(goal, list) and len(goal) == 2):
            raise ModelFileError(f"{source!r}: goal_slice must be [start, stop], got {goal!r}.")
        model.goal_slice = None if goal is None else slice(_count(goal[0], "goal_slice", source, 0),
                                                           _count(goal[1], "goal_slice", source))
        if goal is not None and not goal[0] < goal[1] <= int(np.prod(observation_space.shape)):
            raise ModelFileError(f"{source!r}: goal_slice {goal} does not fit the observation space "
                                 f"{observation_space.shape}.")
        frame = document.get("task_frame_dim")
        model.task_frame_dim = None if frame is None else _count(frame, "task_frame_dim", source)
    model._meta_loss_config = document["meta_loss"]
    model._setup_model()
    for name in state_dicts:
        blob = blobs.get(f"{name}.pth")
        if blob is None:
            raise ModelFileError(f"{source!r} lacks {name}.pth.")
        state = _read_tensors(blob, source, f"{name}.pth")
        try:
            _attribute(model, name).load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, AttributeError) as error:
            raise ModelFileError(f"{source!r}: {name} does not fit this model ({error}).") from error
    for net in ("policy", "meta_loss"):
        if not all(torch.isfinite(p).all() for p in _attribute(model, net).state_dict().values()):
            raise ModelFileError(f"{source!r}: the {net} weights contain NaN or inf; the file is unusable.")
    for name in _COUNTERS:
        if name in counters:
            setattr(model, name, counters[name])
    extra = _read_tensors(blobs[_STATE], source, _STATE) if _STATE in blobs else {}
    if "episode_t" in extra and len(extra["episode_t"]) == model.n_envs:
        model.rollout_buffer._episode_t = extra["episode_t"].numpy().astype(np.int64)
    if not force_reset and "last_obs" in extra and env is not None and len(extra["last_obs"]) == model.n_envs:
        model._last_obs = extra["last_obs"].numpy()
        model._last_episode_starts = extra["last_episode_starts"].numpy()
    pending = extra.get("pending")
    if pending is not None and model.meta_train:
        optimizer_state = pending["optimizer_state"]
        model._pending = (pending["params"], pending["minibatches"], float(pending["inner_lr"]),
                          None if optimizer_state is None else tuple(optimizer_state))
        if "trace" in pending:
            try:
                model._trace = InnerTrace.from_dict(pending["trace"])
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise ModelFileError(f"{path}: the pending update's trace is malformed ({error!r}); the file is "
                                     "damaged or was not written by ML3.save.") from error
    return model


def _read_tensors(blob: bytes, source: str, name: str) -> Any:
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or crafted pickles
        raise ModelFileError(f"{source!r}: {name} is corrupted or holds more than tensors ({error}).") from error


def _count(value: Any, name: str, source: str, minimum: int = 1) -> int:
    """``value`` from a file's JSON as a whole number >= ``minimum``; anything else (a float that int() would cut, a
    string, a bool) is a ModelFileError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ModelFileError(f"{source!r}: {name} must be a whole number >= {minimum}, got {value!r}.")
    return value


__all__ = ["ModelFileError", "load_model", "save_model", "space_from_json", "space_to_json"]


SelfModel = TypeVar("SelfModel", bound="ModelFiles")


class ModelFiles:
    """Mixin of :class:`~sb3_ml3.ml3.ML3`: its files (the model's and the meta-loss's on its own)."""

    def save_meta_loss(self, path: str | os.PathLike) -> None:
        """Save the meta-loss on its own, with what it was trained with (inputs, env, normalisation, ...)."""
        save_meta_loss(self, path)

    @property
    def env_id(self) -> str | None:
        """The registered id of the training env (``None`` without an env or for an unregistered one)."""
        if self.env is None:
            return None
        try:
            spec = self.env.get_attr("spec")[0]
        except AttributeError:
            return None
        return getattr(spec, "id", None)

    def save(self, path: str | os.PathLike, exclude: Any = None, include: Any = None) -> None:
        """Write the model (settings, networks, optimisers, the pending outer step) to ``path``, atomically.

        The file holds JSON and tensors only (:mod:`sb3_ml3.ml3.persistence`), so that :meth:`load` never runs
        code from it. ``exclude``/``include`` are SB3's arguments and are not supported.
        """
        if exclude is not None or include is not None:
            raise ValueError("ML3.save writes every part a resumed training needs; exclude/include are not supported.")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"ML3.save writes to a file name, got {type(path).__name__}.")
        save_model(self, path)

    @classmethod
    def load(cls: type[SelfModel], path: str | os.PathLike, env: GymEnv | None = None,  # type: ignore[override]
             device: torch.device | str = "auto", custom_objects: dict[str, Any] | None = None,
             print_system_info: bool = False, force_reset: bool = True, **kwargs: Any) -> SelfModel:
        """Rebuild a model saved by :meth:`save`, reading JSON and ``weights_only`` tensors only.

        ``kwargs`` replace saved settings (e.g. ``expert=...``, which a file does not hold when it was an
        object); ``custom_objects`` (SB3's) may give ``learning_rate``; its other keys are ignored.
        """
        if custom_objects and "learning_rate" in custom_objects and "learning_rate" not in kwargs:
            kwargs["learning_rate"] = custom_objects["learning_rate"]
        return load_model(cls, path, env=env, device=device, force_reset=force_reset, **kwargs)

    def state_dict_names(self) -> list[str]:
        """The networks and optimisers a file holds, by attribute path."""
        names = ["policy", "policy.optimizer", "value_optimizer", "meta_loss"]
        if self.meta_optimizer is not None:
            names.append("meta_optimizer")
        if self.task_value_net is not None:
            names += ["task_value_net", "task_value_optimizer"]
        if self.task_q_net is not None:
            names += ["task_q_net", "task_q_optimizer"]
        return names
