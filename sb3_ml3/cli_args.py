"""argparse types and the options every ``ml3`` subcommand shares: one place for experiments' CLIs.

Numbers are checked where they are parsed, so nonsense (``--seeds -1``, ``--inner-lr 0``) is a
one-line usage error rather than a traceback or a silent wrong run.
"""

from __future__ import annotations

import argparse


def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum`` (argparse turns its error into a one-line usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
seed = int_at_least(0, "a non-negative integer seed")
non_negative_int = int_at_least(0, "a non-negative integer")


def positive_float(text: str) -> float:
    """An argparse type: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return value


def add_common(p: argparse.ArgumentParser, resumable: bool = True) -> None:
    """--threads, --no-progress, --force (and --resume) on a subcommand; ``--out`` is the experiment's own."""
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: small networks run fastest and repeat exactly)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--force", action="store_true", help="replace the results already in --out")
    if resumable:
        p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")


__all__ = ["int_at_least", "positive_int", "seed", "positive_float", "add_common"]
