"""Fault-injection tests: kills, disk faults, untrusted files, bad inputs, NaNs.

Tests marked ``long`` are skipped unless ``HAGAN_LONG=1`` is set in the environment, so
``pytest``, ``pytest -m slow`` and ``make test`` stay fast; run the long variants with
``HAGAN_LONG=1 pytest tests/faults -m long``.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _skip_long_unless_asked(request):
    if request.node.get_closest_marker("long") and os.environ.get("HAGAN_LONG") != "1":
        pytest.skip("long fault-injection variant: set HAGAN_LONG=1 to run it")
