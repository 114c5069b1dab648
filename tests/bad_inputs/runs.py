"""Bad inputs: runs. One `Case` row each (see tests/bad_inputs/__init__.py).

Most rows damage a copy of one finished run (8 steps, checkpoints at steps 4 and 8), trained once per session, and
resume it: the run is cut back to "killed after its last checkpoint" (no metrics.json), so a resume from
checkpoint-8 only evaluates and a resume from checkpoint-4 trains steps 5-8 again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mtllora.engine import CheckpointError
from mtllora.rundir import RunDirError
from tests.bad_inputs import Case, Inputs, glue_run

CHECKPOINTED = ("trainer.max_steps=8", "trainer.save_steps=4")


def finished_run(inputs: Inputs) -> Path:
    """The session's finished checkpointed run (trained on first use, beside the tiny fixtures)."""
    run_dir = inputs.glue.parent / "runs-finished-run"
    if not (run_dir / "run" / "metrics.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        glue_run(inputs, run_dir, *CHECKPOINTED)
    return run_dir / "run"


def killed_copy(inputs: Inputs, tmp: Path) -> Path:
    """A copy of the finished run in `tmp/run`, as a kill after its last checkpoint leaves it: no metrics.json."""
    run_dir = tmp / "run"
    shutil.copytree(finished_run(inputs), run_dir)
    (run_dir / "metrics.json").unlink()
    return run_dir


def resume_damaged(*checkpoints: int, file: str, truncate: bool = False):
    """A case: `file` deleted (or cut to half its size) in each of `checkpoints` of a killed run, then resumed."""

    def call(inputs: Inputs, tmp: Path) -> dict:
        run_dir = killed_copy(inputs, tmp)
        for step in checkpoints:
            path = run_dir / f"checkpoint-{step}" / file
            if truncate:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            else:
                path.unlink()
        return glue_run(inputs, tmp, *CHECKPOINTED, "trainer.resume=true")

    return call


def resume_before_the_loss_record(inputs: Inputs, tmp: Path) -> dict:
    """A killed run whose last complete checkpoint (4) was written before checkpoints held their loss record."""
    run_dir = killed_copy(inputs, tmp)
    (run_dir / "checkpoint-8" / "COMPLETE").unlink()  # cut short by the kill
    (run_dir / "checkpoint-4" / "training_loss.json").unlink()
    return glue_run(inputs, tmp, *CHECKPOINTED, "trainer.resume=true")


def other_data(resume: bool):
    """A case: the finished run rerun (or resumed) on a copy of its data with one CoLA training row changed."""

    def call(inputs: Inputs, tmp: Path) -> dict:
        shutil.copytree(finished_run(inputs), tmp / "run")
        glue = shutil.copytree(inputs.glue, tmp / "glue")
        train = glue / "CoLA" / "train.tsv"
        train.write_text(train.read_text().replace("\t1\t", "\t0\t", 1))
        return glue_run(inputs, tmp, *CHECKPOINTED, f"trainer.resume={str(resume).lower()}", glue=glue)

    return call


def other_base_model(inputs: Inputs, tmp: Path) -> dict:
    """The killed run resumed with a base model whose weights were perturbed (same names, shapes and sizes)."""
    from safetensors.torch import load_file, save_file

    killed_copy(inputs, tmp)
    encoder = shutil.copytree(inputs.encoder, tmp / "encoder")
    weights = load_file(encoder / "model.safetensors")
    save_file({name: tensor + 1e-3 for name, tensor in weights.items()}, encoder / "model.safetensors")
    return glue_run(inputs, tmp, *CHECKPOINTED, "trainer.resume=true", encoder=encoder)


CASES: list[Case] = [
    # A checkpoint missing state it needs is incomplete: resume falls back to the previous complete one, saying so.
    Case(
        "runs-checkpoint-without-rng-state",
        resume_damaged(8, file="rng_state.pth"),
        None,
        r"resumed from checkpoint-4, not from the newer checkpoint-8, which is incomplete: "
        r"checkpoint-8/rng_state\.pth is missing",
    ),
    Case(
        "runs-checkpoint-without-optimizer",
        resume_damaged(8, file="optimizer.pt"),
        None,
        r"resumed from checkpoint-4, .*checkpoint-8/optimizer\.pt is missing",
    ),
    Case(
        "runs-checkpoint-truncated-adapter",
        resume_damaged(8, file="adapter.safetensors", truncate=True),
        None,
        r"resumed from checkpoint-4, .*checkpoint-8/adapter\.safetensors is unreadable \(ValueError: \d+ bytes",
    ),
    Case(
        "runs-checkpoint-truncated-optimizer",
        resume_damaged(8, file="optimizer.pt", truncate=True),
        None,
        r"resumed from checkpoint-4, .*checkpoint-8/optimizer\.pt is unreadable \(BadZipFile",
    ),
    Case(
        "runs-checkpoint-truncated-trainer-state",
        resume_damaged(8, file="trainer_state.json", truncate=True),
        None,
        r"resumed from checkpoint-4, .*checkpoint-8/trainer_state\.json is unreadable \(JSONDecodeError",
    ),
    # A checkpoint from before the loss record: the resume goes on, and says what its final_loss covers.
    Case(
        "runs-checkpoint-without-loss-record",
        resume_before_the_loss_record,
        None,
        r"train\.final_loss covers only the 4 step\(s\) after the resume from .*checkpoint-4, which has no "
        r"training_loss\.json",
    ),
    # ... and with no complete checkpoint left, an error naming every bad file.
    Case(
        "runs-no-checkpoint-with-rng-state",
        resume_damaged(4, 8, file="rng_state.pth"),
        CheckpointError,
        r"no checkpoint holds everything resuming needs \(checkpoint-8/rng_state\.pth is missing; "
        r"checkpoint-4/rng_state\.pth is missing\)",
    ),
    Case(
        "runs-no-checkpoint-with-a-whole-trainer-state",
        resume_damaged(4, 8, file="trainer_state.json", truncate=True),
        CheckpointError,
        r"checkpoint-8/trainer_state\.json is unreadable .*checkpoint-4/trainer_state\.json is unreadable",
    ),
    # The data and the base model a run read identify it, by content.
    Case(
        "runs-rerun-on-other-data",
        other_data(resume=False),
        RunDirError,
        r"refusing to write into .*trained on other inputs .*data file CoLA/train\.tsv: \d+ bytes, sha256 \w{12} "
        r"there, \d+ bytes, sha256 \w{12} now",
    ),
    Case(
        "runs-finished-run-resumed-on-other-data",
        other_data(resume=True),
        RunDirError,
        r"refusing to resume .*data file CoLA/train\.tsv",
    ),
    Case(
        "runs-resume-with-another-base-model",
        other_base_model,
        RunDirError,
        r"refusing to resume .*base model file model\.safetensors: \d+ bytes, sha256 \w{12} there",
    ),
]
