"""The ``--workers N`` / ``--address`` options of the meta-training subcommands (no Ray import here).

``--workers`` absent: the experiment's own single-process loop, as before. ``--workers 0``: the sharded
meta-trainer in this process (no Ray), the reference a distributed run must match. ``--workers N >= 1``:
N Ray workers on a local Ray (``ray.init`` takes ~6-11 s) or on the cluster at ``--address``.
"""

from __future__ import annotations

import argparse
import importlib.util

from sb3_ml3.cli_args import int_at_least, positive_int

non_negative_int = int_at_least(0, "a non-negative number of workers")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add --workers, --address, --tasks-per-step and --checkpoint-every to a subcommand."""
    g = p.add_argument_group("distributed meta-training (pip install -e \".[ray]\")")
    g.add_argument("--workers", type=non_negative_int, default=None,
                   help="meta-train on N Ray workers, each owning a share of the optimizees of every outer step "
                   "(0: the same sharded meta-training in this process, without Ray); default: the "
                   "single-process loop")
    g.add_argument("--address", default=None,
                   help="an existing Ray cluster for the workers ('auto', 'ray://head:10001'); default: a local Ray")
    g.add_argument("--tasks-per-step", type=positive_int, default=None,
                   help="optimizees per outer step, split across the workers (default 1, the paper's; "
                   "at least --workers); the same number gives the same meta-gradients with any --workers")
    g.add_argument("--checkpoint-every", type=positive_int, default=25,
                   help="outer steps between checkpoints in OUT/checkpoints (--resume continues from the last)")


def distributed_settings(args: argparse.Namespace) -> dict | None:
    """The distributed settings of parsed ``args``, or ``None`` for the single-process loop.

    Refuses combinations that would be silently ignored: distributed options without ``--workers``.
    """
    if args.workers is None:
        given = [flag for flag, value in (("--address", args.address), ("--tasks-per-step", args.tasks_per_step),
                                          ("--resume", getattr(args, "resume", False))) if value]
        if given:
            raise ValueError(f"{', '.join(given)} apply to the sharded meta-trainer: add --workers N "
                             "(0 for this process, N >= 1 for Ray workers).")
        return None
    if args.workers == 0 and args.address is not None:
        raise ValueError("--address names a Ray cluster to run the workers on; give --workers N >= 1 with it.")
    if args.workers >= 1:
        if importlib.util.find_spec("ray") is None:  # a missing extra is one line, not a traceback
            raise ValueError('--workers N >= 1 needs Ray: pip install -e ".[ray]" (or use --workers 0).')
    tasks = args.tasks_per_step if args.tasks_per_step is not None else 1
    if tasks < max(1, args.workers):
        raise ValueError(f"--workers {args.workers} needs at least {args.workers} optimizees per outer step; "
                         f"give --tasks-per-step {args.workers} or more (got {tasks}).")
    return {"workers": args.workers, "address": args.address, "tasks_per_step": tasks,
            "checkpoint_every": args.checkpoint_every, "resume": bool(getattr(args, "resume", False))}


__all__ = ["add_arguments", "distributed_settings", "non_negative_int"]
