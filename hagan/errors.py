"""The kit's error types: one base class that the ``hagan`` command prints as one line.

Every error a user can cause (a bad file, a wrong setting, a run folder in the wrong state)
derives from :class:`HaganError`. Its message says what was expected, what was found and how to
fix it (build it with :func:`explain`). The CLI prints ``HaganError`` and ``OSError`` as one line
and exits non-zero; anything else is a programming error and keeps its traceback.

The subclasses also derive from ``ValueError`` (or ``RuntimeError``) so that code written
against earlier versions, which caught those, keeps working.
"""

from __future__ import annotations


class HaganError(Exception):
    """An error caused by the user's input or by the state of a file or folder."""


class ConfigError(HaganError, ValueError):
    """A setting is unknown or out of range (``hagan.config``)."""


class DataError(HaganError, ValueError):
    """A dataset, input file or labels table cannot be used as it is."""


class CheckpointError(HaganError, ValueError):
    """A checkpoint or weights file is missing, damaged, unsafe or of the wrong layout."""


class RunError(HaganError, RuntimeError):
    """A run or output folder is in a state that a command must not touch (locked, foreign,
    damaged), or a run cannot go on (e.g. a non-finite loss)."""


def explain(what: str, expected: str, found: str, fix: str | None = None) -> str:
    """One line in the kit's voice: ``"<what>: expected <expected>, found <found>. <fix>"``.

    Example:
        >>> explain("--size", "a power of two in 32..256", "100", "Use e.g. --size 128.")
        '--size: expected a power of two in 32..256, found 100. Use e.g. --size 128.'
    """
    text = f"{what}: expected {expected}, found {found}."
    if fix:
        text += f" {fix}"
    return text
