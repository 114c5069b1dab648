"""`python -m mtllora.train <overrides>` for a transformers release that rejects a TrainingArguments keyword the
engine passes: the keyword is mapped to its older name (OLDER_NAMES) or dropped, and what was done is recorded.
The device check's train test falls back to this (reporting `engine_compat` as failed) so the numbers still come back.

    python -m tests.gpu.train_compat --record SHIMS.json <overrides>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

# Keywords the engine passes to TrainingArguments that older transformers releases name differently.
OLDER_NAMES = {"activation_checkpointing": "gradient_checkpointing"}


def shim_training_arguments(record: Path) -> None:
    """Makes TrainingArguments accept the keywords this transformers lacks (mapped to their older names, or
    dropped), writing the list of what was done to `record` at each construction."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    original = TrainingArguments.__init__
    shims: list[str] = []

    def init(self, *args, **kwargs):
        for key in [k for k in kwargs if k not in fields]:
            value = kwargs.pop(key)
            older = OLDER_NAMES.get(key)
            if older in fields:
                kwargs.setdefault(older, value)
                shims.append(f"TrainingArguments({key}={value!r}) passed as {older}={value!r}")
            else:
                shims.append(f"TrainingArguments({key}={value!r}) dropped: unknown to this transformers")
        record.write_text(json.dumps(shims, indent=2) + "\n")
        original(self, *args, **kwargs)

    TrainingArguments.__init__ = init


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.train_compat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, required=True, help="JSON file listing the shims applied")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    shim_training_arguments(args.record)
    sys.argv = ["mtllora.train", *args.overrides]
    from mtllora.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
