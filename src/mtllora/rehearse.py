"""The rehearsal (`make rehearse`, scripts/rehearse.sh): every paper profile's exact config through its real
entry point (scripts/reproduce-*.sh) with tiny stand-ins, so what would break on the GPUs breaks here first.

Only what the stand-ins need is swapped (`overrides`): the model (a tiny random one of the same family, written
here), the data (tiny sets in the real layouts, written here), the training length (trainer.max_steps=2) and the
evaluation size (a few examples per task). Everything else (methods and their recipes, global batch, DeepSpeed
ZeRO-2 on 2 ranks, precision, gradient checkpointing, checkpoint saving, beams, tables) is the paper profile's.

    python -m mtllora.rehearse write DIR              # the stand-in models and data under DIR
    python -m mtllora.rehearse overrides PROFILE DIR  # the Hydra overrides of PROFILE, one per line
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .testing import write_tiny_commonsense, write_tiny_encoder, write_tiny_glue, write_tiny_llama

PROFILES = ("glue", "commonsense", "image_text")
MAX_STEPS = 2
EVAL_SAMPLES = 2


def overrides(profile: str, scratch: Path) -> list[str]:
    """Returns the Hydra overrides that turn paper profile `profile` into its rehearsal (the stand-ins under
    `scratch`); the keys they set are `swapped_keys(profile)`."""
    common = [f"trainer.max_steps={MAX_STEPS}", f"benchmark.max_eval_samples={EVAL_SAMPLES}"]
    if profile == "glue":
        return [f"model.name_or_path={scratch / 'tiny-encoder'}", f"paths.data_dir={scratch / 'glue'}", *common]
    if profile == "commonsense":
        return [
            f"model.name_or_path={scratch / 'tiny-llama'}",
            f"paths.data_dir={scratch / 'commonsense'}",
            # Tiny train files are partial by construction; the tokenisation cache goes with them.
            "benchmark.allow_partial_train=true",
            f"benchmark.cache_dir={scratch / 'cache'}",
            *common,
            "benchmark.max_new_tokens=4",
        ]
    if profile == "image_text":
        return [
            f"model.name_or_path={scratch / 'image-text' / 'tiny-vl-bart'}",
            f"benchmark.data_dir={scratch / 'image-text'}",
            # The synthetic set's features are one file (the real ones: the official per-image CLIP files).
            "benchmark.features=[features.h5]",
            *common,
        ]
    raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")


def swapped_keys(profile: str) -> set[str]:
    """The config keys the rehearsal of `profile` changes (paths.data_dir also changes what benchmark.data_dir
    resolves to)."""
    keys = {override.split("=", 1)[0] for override in overrides(profile, Path("/x"))}
    return keys | ({"benchmark.data_dir"} if "paths.data_dir" in keys else set())


def write(scratch: Path) -> None:
    """Writes every profile's stand-in model and data under `scratch`."""
    scratch.mkdir(parents=True, exist_ok=True)
    write_tiny_glue(scratch / "glue", rows=32, all_tasks=True)
    write_tiny_encoder(scratch / "tiny-encoder")

    write_tiny_commonsense(scratch / "commonsense", train=16, test=EVAL_SAMPLES)
    from .benchmarks.commonsense import CommonsenseBenchmark

    bench = CommonsenseBenchmark(scratch / "commonsense", allow_partial_train=True, cache_dir=scratch / "cache")
    texts = [bench.prompt(r, r["output"]) for r in bench.train_records()]
    texts += [bench.prompt(r) for task in bench.tasks for r in bench.test_records(task)]
    write_tiny_llama(scratch / "tiny-llama", texts)

    image_text = scratch / "image-text"
    _run(
        "mtllora.benchmarks.image_text_synthetic", "--out", image_text, "--train-per-task", "8", "--eval-per-task", "2"
    )
    images = [image_text / folder / "images" for folder in ("COCO", "VG", "GQA", "nlvr")]
    _run(
        "mtllora.benchmarks.image_text_features",
        "--dim",
        "16",
        "--output",
        image_text / "features.h5",
        "--images",
        *images,
    )
    model = ["--feat-dim", "16", "--d-model", "32", "--out", image_text / "tiny-vl-bart"]
    _run("mtllora.vl_bart_tiny", "--data", image_text, *model)


def _run(module: str, *args: object) -> None:
    """Runs `python -m module args` (in its own process, as the reproduce scripts run it), its output silenced."""
    subprocess.run([sys.executable, "-m", module, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m mtllora.rehearse", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("write").add_argument("scratch", type=Path)
    listing = commands.add_parser("overrides")
    listing.add_argument("profile", choices=PROFILES)
    listing.add_argument("scratch", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.scratch.resolve())
    else:
        print("\n".join(overrides(args.profile, args.scratch.resolve())))


if __name__ == "__main__":
    main()
