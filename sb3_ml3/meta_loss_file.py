"""The meta-loss archive: a zip with ``meta_loss.json`` (the spec, as JSON) and ``phi.pt`` (the weights).

Writing is atomic (a temporary file renamed over the target); reading only parses JSON and returns the weights'
bytes, which :meth:`sb3_ml3.meta_loss.MetaLoss.from_config` loads with ``torch.load(weights_only=True)``, so a
crafted file cannot execute code.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any, Union

import torch

from sb3_ml3.atomic import atomic_path
from sb3_ml3.input_spec import MetaLossSpecError

SPEC_FILE = "meta_loss.json"
WEIGHTS_FILE = "phi.pt"


def write_archive(path: Union[str, os.PathLike], config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """Write ``config`` and the tensors of ``state`` (moved to the CPU) to the archive at ``path``, atomically."""
    try:
        spec_text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MetaLossSpecError(f"Meta-loss metadata must be JSON-serialisable and finite: {exc}") from exc
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(SPEC_FILE, spec_text)
        archive.writestr(WEIGHTS_FILE, buffer.getvalue())


def read_archive(path: Union[str, os.PathLike]) -> tuple[dict[str, Any], bytes]:
    """(the JSON spec, the weights' bytes) of the archive at ``path``; a clear error for anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No meta-loss file at {path!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if SPEC_FILE not in names or WEIGHTS_FILE not in names:
                raise MetaLossSpecError(
                    f"{path!r} is not a meta-loss archive: it lacks {SPEC_FILE} or {WEIGHTS_FILE}. "
                    "Save meta-losses with MetaLoss.save() (or ML3.save_meta_loss())."
                )
            config = json.loads(archive.read(SPEC_FILE).decode("utf-8"))
            weights = archive.read(WEIGHTS_FILE)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise MetaLossSpecError(f"Cannot read meta-loss file {path!r}: it is corrupted or not a meta-loss ({exc}).") from exc
    if not isinstance(config, dict):
        raise MetaLossSpecError(f"{path!r}: {SPEC_FILE} must hold a JSON object, not {type(config).__name__}.")
    return config, weights
