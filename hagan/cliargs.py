"""argparse value types shared by the commands' ``add_arguments``: a bad number is refused at
parse time with one line and exit status 2 (argparse's usual error), never a traceback later.

Example::

    p.add_argument("--n", type=positive_int, default=4)
"""

from __future__ import annotations

import argparse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (a count that must not be zero: --n, --iters, --batch-size)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a count that may be zero: --warmup, --permutations, --chunk)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, found {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (e.g. a voxel size in mm)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text}")
    return value
