"""Bad inputs, one row each: what a user can get wrong and the clear error (or recorded warning) it must give.

Each area's module (`config`, `runs`, `data`, `serving`) holds a list `CASES` of `Case` rows; the test
`tests/test_bad_inputs.py` runs every row. A new case is one row (plus, at most, a small function that makes the bad
input); a bad Hydra override of the tiny GLUE run is one `override_case` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.test_train import compose_cfg, overrides


@dataclass(frozen=True)
class Inputs:
    """The tiny fixtures a case starts from, shared by all cases: copy them before changing anything."""

    encoder: Path  # write_tiny_encoder
    glue: Path  # write_tiny_glue


@dataclass(frozen=True)
class Case:
    """`call(inputs, tmp_path)` makes and uses one bad input. With an `error` class it must raise it with a message
    matching `match` (re.search); with `error=None` it returns a run's metrics dict, whose "warnings" must hold a
    message matching `match` (the run still means something, and says what it did)."""

    id: str
    call: Callable[[Inputs, Path], Any]
    error: type[BaseException] | None
    match: str


def override_case(id: str, override: str, error: type[BaseException] | None, match: str) -> Case:
    """A `Case` whose bad input is one Hydra override of the tiny GLUE run (`glue_run`)."""
    return Case(id, lambda inputs, tmp: glue_run(inputs, tmp, override), error, match)


def glue_run(inputs: Inputs, tmp: Path, *extra: str, glue: Path | None = None, encoder: Path | None = None) -> dict:
    """Runs experiment=glue_ci on the tiny fixtures (or the given copies) in `tmp/run`; returns its metrics."""
    from mtllora.train import run

    args = overrides(encoder or inputs.encoder, glue or inputs.glue, tmp, *extra)
    return run(compose_cfg(args, tmp / "run"))
