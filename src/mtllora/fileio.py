"""Files written whole or not at all: a reader (another rank, a resumed run, `make tables`) never sees half a file,
because each is written beside its place and then renamed onto it (one rename, atomic on one filesystem)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` (its name + ".tmp") for the block to write; when the block ends without
    an error, renames it onto `path`. For writers that take a file name (safetensors' `save_file`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    tmp.replace(path)


def write_atomic(path: str | Path, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` through `atomic_path`; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
