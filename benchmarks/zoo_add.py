"""Put a meta-trained loss into the package's zoo (``sb3_ml3/zoo/losses/<env>.zip``) with its provenance.

    python benchmarks/zoo_add.py docs/results/ppo_family/r4_penalty_meta_loss_seed1.zip \
        --results docs/results/ppo_family/metatest_reacher_300k_r4_seed1loss_a.json \
                  docs/results/ppo_family/metatest_reacher_300k_r4_seed1loss_b.json \
        --baseline docs/results/ppo_family/metatest_reacher_300k_ppo.json \
        --command "python benchmarks/ppo_family.py meta-train --env ReacherGoal-v0 --seed 1 ..." \
        --selection "best train-split meta-validation of meta-train seeds 0, 1, 2" \
        --settings '{"n_envs": 8, "norm_reward": true, "max_grad_norm": 0.5}'

The measured numbers come from the meta-test result files (``ppo_family.py meta-test``): the final task
metric, final distance, success and action saturation per seed, for the loss and for the baseline. Settings
an older file did not record (``--settings``) are added to its metadata, so that ML3 meets the loss with
the update it was meta-trained for. An existing zoo entry is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

from sb3_ml3 import MetaLoss
from sb3_ml3.zoo import PROVENANCE_KEYS

ZOO = os.path.join(os.path.dirname(__file__), os.pardir, "sb3_ml3", "zoo", "losses")


def summarise(paths: list[str], name: str | None = None) -> dict[str, Any]:
    """Per-seed final numbers of the runs in meta-test result files: those called ``name``, or with ``None``
    every run that is not the PPO baseline (a result file often holds both)."""
    runs = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        runs += [r for r in data["runs"] if (r["name"] != "ppo" if name is None else r["name"] == name)]
    if not runs:
        raise SystemExit(f"No runs{'' if name is None else f' named {name!r}'} in {paths}.")
    final = np.array([r["curve"][-1] for r in runs])
    return {
        "files": [os.path.relpath(p) for p in paths],
        "timesteps": int(runs[0]["timesteps"]) if "timesteps" in runs[0] else None,
        "seeds": [int(r["seed"]) for r in runs],
        "final_metric": final.round(4).tolist(),
        "final_metric_mean": round(float(final.mean()), 4),
        "final_metric_std": round(float(final.std()), 4),
        "final_distance": [round(float(r["behaviour"]["final_distance"]), 4) for r in runs],
        "success_rate": [round(float(r["behaviour"]["success_rate"]), 3) for r in runs],
        "saturation": [round(float(r["behaviour"]["saturation"]), 3) for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loss", help="the meta-loss file")
    parser.add_argument("--results", nargs="+", required=True, help="meta-test result files of this loss")
    parser.add_argument("--baseline", nargs="+", required=True, help="result files of the tuned PPO, same seeds")
    parser.add_argument("--command", required=True, help="the command that meta-trained the loss")
    parser.add_argument("--selection", required=True, help="how this loss was chosen among others")
    parser.add_argument("--settings", type=json.loads, default={}, help="JSON settings the file did not record")
    parser.add_argument("--not-trained", action="store_true", help="the loss is an untrained starting point")
    parser.add_argument("--note", default="", help="anything a user must know")
    parser.add_argument("--force", action="store_true", help="replace an existing zoo entry")
    args = parser.parse_args()

    loss = MetaLoss.load(args.loss)
    env_id = loss.metadata.get("env_id")
    if not env_id:
        raise SystemExit(f"{args.loss} records no env_id: save it with ML3.save_meta_loss.")
    target = os.path.normpath(os.path.join(ZOO, f"{env_id}.zip"))
    if os.path.exists(target) and not args.force:
        raise SystemExit(f"{target} exists: pass --force to replace it.")
    metadata = dict(loss.metadata)
    metadata.update(args.settings)
    metadata["zoo"] = {
        "source": os.path.relpath(args.loss),
        "command": args.command,
        "selection": args.selection,
        "trained": not args.not_trained,
        "meta_test": {"loss": summarise(args.results), "ppo": summarise(args.baseline, "ppo")},
        "note": args.note,
    }
    assert set(PROVENANCE_KEYS) <= set(metadata["zoo"])
    loss.metadata = metadata
    os.makedirs(os.path.dirname(target), exist_ok=True)
    loss.save(target)
    print(f"wrote {target}: {json.dumps(metadata['zoo']['meta_test']['loss']['final_metric_mean'])} "
          f"(PPO {metadata['zoo']['meta_test']['ppo']['final_metric_mean']})")


if __name__ == "__main__":
    main()
