"""The run store of a comparison: atomic writes, the output-folder guard, and the log of finished runs.

A comparison can take hours, so what it has written must survive a kill and must never replace a
user's earlier results unasked:

- every result file is written to a temporary name in the same folder and renamed over the old
  one (:func:`atomic_write_json`, and :mod:`sb3_ml3.atomic`): a process
  killed mid-write leaves the previous copy whole;
- an output folder that already holds results is refused unless the caller resumes it or forces a
  fresh start (:func:`prepare_out_dir`);
- each finished run is appended to ``runs_done.jsonl`` (:class:`RunLog`), so a stopped comparison
  resumes where it was and Ctrl-C loses at most the run in progress.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sb3_ml3.atomic import atomic_path, atomic_write_text, jsonable

#: finished runs of a comparison, one JSON line each after a header with the shared settings' fingerprint
RUNS_FILE = "runs_done.jsonl"
#: files whose presence means a folder holds a comparison's results
RESULT_FILES = ("results.json", RUNS_FILE)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> str:
    """``json.dump`` of :func:`jsonable` ``data`` to ``path``, atomically; returns the path.

    The text is built before the file is touched, so unserialisable data never truncates it.
    """
    return atomic_write_text(path, json.dumps(jsonable(data), indent=indent) + "\n")


def holds_results(out_dir: str | os.PathLike) -> list[str]:
    """The result files of an earlier comparison in ``out_dir`` (empty if none)."""
    return [name for name in RESULT_FILES if os.path.exists(os.path.join(out_dir, name))]


def prepare_out_dir(out_dir: str | os.PathLike, resume: bool = False, force: bool = False,
                    extra_files: Sequence[str] = ()) -> None:
    """Check that ``out_dir`` may be written, then create it.

    A folder holding earlier results (``results.json``, ``runs_done.jsonl``) is refused unless
    ``resume`` (continue it) or ``force`` (start afresh: its run log and checkpoints are replaced,
    and ``results.json`` is overwritten at the end). ``extra_files`` are other names that count as
    results (e.g. a per-experiment results file).
    """
    if resume and force:
        raise ValueError("--resume continues the comparison in --out and --force starts it afresh: give one of them.")
    out_dir = os.fspath(out_dir)
    found = holds_results(out_dir) + [n for n in extra_files if os.path.exists(os.path.join(out_dir, n))]
    if found and not (resume or force):
        raise ValueError(
            f"{out_dir} already holds results ({', '.join(found)}); pass --resume to continue that run, "
            "--force to replace it, or choose another --out."
        )
    os.makedirs(out_dir, exist_ok=True)


class RunLog:
    """The finished runs of a comparison in ``out_dir/runs_done.jsonl``, so a long one can resume.

    The header holds the fingerprint of what every run shares (env, tasks, budget, schedule); a
    resumed comparison must match it. Each run line carries its own algorithm's fingerprint (its
    settings and, for ML3, its loss): a run is reused only while that is unchanged, so changing
    ML3's recipe reruns ML3 and keeps the hours of PPO runs. Each meta-loss the comparison
    meta-trains gets a ``{"meta_loss": seed, "fingerprint": ...}`` line: a saved loss is reused
    only by the settings that made it. Lines are appended and flushed one at a time; a torn last
    line (a kill mid-append) is ignored on resume.
    """

    def __init__(self, out_dir: str | os.PathLike, fingerprint: Mapping[str, Any], resume: bool) -> None:
        self.path = os.path.join(out_dir, RUNS_FILE)
        self.runs: dict[tuple, dict[str, Any]] = {}
        self.meta_losses: dict[int, Any] = {}
        header = jsonable({"fingerprint": fingerprint})
        if resume and os.path.exists(self.path):
            self._load(header["fingerprint"])
            return
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(self.path, json.dumps(header, sort_keys=True) + "\n")

    def _load(self, fingerprint: Any) -> None:
        with open(self.path) as f:
            lines = f.read().splitlines()
        try:
            saved = json.loads(lines[0])["fingerprint"] if lines else None
            records = []
            for i, line in enumerate(lines[1:], start=2):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    if i != len(lines):  # only the last line may be torn by a kill
                        raise
            for r in records:  # later lines win: a rerun replaces the run it redid
                if "meta_loss" in r:
                    self.meta_losses[int(r["meta_loss"])] = r["fingerprint"]
                else:
                    self.runs[self.key(r["algo"], r["net_arch"], r["seed"], r["task"])] = r
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path} is not a run log of ml3 compare ({exc}); move it away to start over.") from None
        if saved != fingerprint:
            raise ValueError(
                f"The comparison in {os.path.dirname(self.path) or '.'} was started with another env, task set, "
                "budget or evaluation schedule; resume it with the same ones, or use another output folder."
            )

    @staticmethod
    def key(algo: str, net_arch: Sequence[int], seed: int, task: int | None) -> tuple:
        return algo, tuple(int(w) for w in net_arch), int(seed), task

    def get(self, algo: str, net_arch: Sequence[int], seed: int, task: int | None,
            fingerprint: Any) -> tuple[dict[str, Any] | None, bool]:
        """``(run, changed)``: the finished run if it ran with ``fingerprint`` (its algorithm's current
        settings), else ``None``; ``changed`` when a finished run exists but with other settings."""
        run = self.runs.get(self.key(algo, net_arch, seed, task))
        if run is None:
            return None, False
        if jsonable(fingerprint) != run.get("fingerprint"):
            return None, True
        return {k: v for k, v in run.items() if k != "fingerprint"}, False

    def add(self, run: Mapping[str, Any], fingerprint: Any) -> None:
        self._append(dict(run, fingerprint=fingerprint))

    def add_meta_loss(self, seed: int, fingerprint: Any) -> None:
        self.meta_losses[int(seed)] = jsonable(fingerprint)
        self._append({"meta_loss": int(seed), "fingerprint": fingerprint})

    def _append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(jsonable(record)) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


__all__ = [
    "RESULT_FILES",
    "RUNS_FILE",
    "RunLog",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "holds_results",
    "jsonable",
    "prepare_out_dir",
]
