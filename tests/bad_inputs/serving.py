"""Bad inputs: serving. One `Case` row each (see tests/bad_inputs/__init__.py)."""

from __future__ import annotations

from tests.bad_inputs import Case

CASES: list[Case] = []
