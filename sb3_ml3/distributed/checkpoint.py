"""Checkpoints of a meta-training run: everything needed to continue it exactly, written atomically.

A checkpoint holds phi, the meta-optimizer's state, the next outer iteration, every task's optimizee and
generator state (keyed by task index, so a run may resume with another number of workers), the
figures recorded so far, and the run's identity (problem, seed, step sizes). It is written to a
temporary file beside the target and renamed over it (:func:`sb3_ml3.atomic.atomic_path`): a run killed
mid-write keeps its previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from sb3_ml3.atomic import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, identity: Mapping[str, Any], iteration: int,
                    meta_loss_state: Mapping[str, torch.Tensor], optimizer_state: Mapping[str, Any],
                    shards: Mapping[int, Any], record: Mapping[str, Any], reset: bool) -> str:
    """Write a checkpoint taken after ``iteration - 1`` (``iteration`` is the next outer step to run)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "identity": json.dumps(identity, sort_keys=True),
        "iteration": int(iteration),
        "meta_loss": {k: v.detach().cpu().clone() for k, v in meta_loss_state.items()},
        "optimizer": optimizer_state,
        "shards": {int(i): s for i, s in shards.items()},
        "record": dict(record),
        "reset": bool(reset),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return os.fspath(path)


def load_checkpoint(path: str | os.PathLike, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint of the run ``identity``; a checkpoint of another run is refused with what differs."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable meta-training checkpoint ({exc}); move it away or pass --force.") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a meta-training checkpoint of format {FORMAT_VERSION}; pass --force to start over.")
    saved = json.loads(payload["identity"])
    wanted = json.loads(json.dumps(identity, sort_keys=True))
    if saved != wanted:
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ValueError(f"The checkpoint {path} belongs to a run with other settings ({', '.join(differ)}); resume "
                         "with the same ones, or pass --force to start afresh.")
    return payload


__all__ = ["FORMAT_VERSION", "load_checkpoint", "save_checkpoint"]
