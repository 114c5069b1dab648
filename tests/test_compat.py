"""The engine on the oldest transformers the project supports (the GPU machines' 5.17.0, we pin 5.24), and a
trainer that imports without the benchmark-only packages.

The old release is installed without dependencies into a folder that goes first on PYTHONPATH (everything else is
this venv's), once per checkout: `.venv/compat-transformers-5.17` (PyPI must be reachable the first time). A
subprocess then runs existing tests of the train and generation paths under it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from mtllora.benchmarks.glue import MultiTaskClassifier

from .conftest import tiny_bert

REPO = Path(__file__).resolve().parents[1]
# transformers 5.17.0 requires huggingface-hub >=1.5,<2 (this venv has 2.x); 1.33.0 is the GPU machines' version.
# tokenizers 0.23.x and safetensors 0.8.x of this venv satisfy 5.17's requirements.
COMPAT_PACKAGES = {"transformers": "5.17.0", "huggingface_hub": "1.33.0"}
OVERLAY = REPO / ".venv" / "compat-transformers-5.17"
# The train path (two tiny glue_ci runs, one with gradient checkpointing: what failed on 5.17) and batched
# generation with mixed task ids on a tiny Llama.
COMPAT_TESTS = [
    "tests/test_train.py::test_gradient_checkpointing_trains_the_task_headed_model_to_the_same_weights",
    # Every trainer.* key that is a field of the installed TrainingArguments reaches it (the fields differ by version).
    "tests/test_train.py::test_every_trainer_key_reaches_the_training_arguments_or_is_refused",
    "tests/benchmarks/test_instruct.py::test_batched_generation_with_mixed_tasks_equals_one_by_one",
]


def compat_overlay() -> Path:
    """Returns the folder holding COMPAT_PACKAGES (pip --no-deps --target), installing it on first use; a folder
    cut short by a failed install is never used (it is renamed into place complete)."""
    if (OVERLAY / ".complete").exists():
        return OVERLAY
    partial = OVERLAY.with_name(f"{OVERLAY.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    pins = [f"{name}=={version}" for name, version in COMPAT_PACKAGES.items()]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(partial)]
    result = subprocess.run([*command, *pins], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"installing {pins} failed (PyPI reachable?):\n{result.stderr[-3000:]}"
    (partial / ".complete").write_text(" ".join(pins) + "\n")
    shutil.rmtree(OVERLAY, ignore_errors=True)
    partial.rename(OVERLAY)
    return OVERLAY


def test_engine_trains_and_generates_on_the_oldest_supported_transformers(tmp_path):
    overlay = compat_overlay()
    script = textwrap.dedent(
        f"""
        import sys
        import huggingface_hub, transformers
        found = {{"transformers": transformers.__version__, "huggingface_hub": huggingface_hub.__version__}}
        assert found == {COMPAT_PACKAGES!r}, found
        assert transformers.__file__.startswith({str(overlay)!r}), transformers.__file__
        import pytest
        options = ["-q", "-p", "no:cacheprovider", "--basetemp", {str(tmp_path / "inner")!r}]
        sys.exit(pytest.main([*options, *{COMPAT_TESTS!r}]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(overlay), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"{len(COMPAT_TESTS)} passed" in result.stdout, result.stdout[-2000:]


def test_the_trainer_imports_without_the_benchmark_only_packages():
    # pycocoevalcap (COCO captions) and h5py (image features) serve one benchmark each: a machine without them
    # must still train the others. Hidden by a finder that refuses them.
    script = textwrap.dedent(
        """
        import sys

        HIDDEN = {"pycocoevalcap", "h5py"}

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        import mtllora.train
        from mtllora.metrics import caption_metrics, glue_metrics

        assert glue_metrics("sst2", [1, 0], [1, 1]) == {"accuracy": 0.5}
        try:
            caption_metrics(["a dog"], [["a dog"]])
        except ModuleNotFoundError as err:
            assert err.name == "pycocoevalcap", err
        else:
            raise AssertionError("pycocoevalcap was not hidden")
        print("imported", sorted(HIDDEN & {m.split(".")[0] for m in sys.modules}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("imported []")


def test_gradient_checkpointing_under_its_old_name_takes_every_keyword_of_older_trainers():
    # transformers 5.17's Trainer calls `gradient_checkpointing_enable(gradient_checkpointing_kwargs=...,
    # every_n_layers=..., offload=...)`: the task-headed model passes them on to its encoder.
    model = MultiTaskClassifier(tiny_bert(), num_labels=[2, 1])
    assert not model.is_activation_checkpointing
    model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=1, offload=False
    )
    assert model.is_activation_checkpointing
