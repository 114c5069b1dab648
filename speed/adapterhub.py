"""AdapterHub peer: its own virtual environment, created on demand, and a subprocess that measures there.

`adapters==1.3.0` pins `transformers~=4.57.6` while this project pins transformers 5, so AdapterHub cannot be
installed next to mtllora. The benchmark creates `.venv-adapterhub/` (a plain venv with exactly
`torch==2.13.0 adapters==1.3.0`; torch must be an exact pin, a range resolves to a multi-GB CUDA build), runs
`adapterhub_worker.py` with that venv's Python and reads its JSON. Any failure becomes the reason shown in the
AdapterHub rows ("not run: ..."), never a silent omission.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PINS = ("torch==2.13.0", "adapters==1.3.0")
WORKER = Path(__file__).with_name("adapterhub_worker.py")
MARKER = ".mtllora-pins"  # written after a successful install; holds the pins it installed


class AdapterHubUnavailable(RuntimeError):
    """AdapterHub could not be installed or measured; the message is the reason shown in the table."""


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


def ensure_venv(venv: Path, log: Callable[[str], None], timeout_s: float = 900) -> Path:
    """Returns the Python of the AdapterHub venv at `venv`, creating it and installing PINS first if it does not
    hold exactly these pins; raises AdapterHubUnavailable with the reason on failure."""
    python = venv / "bin" / "python"
    marker = venv / MARKER
    if python.exists() and marker.exists() and marker.read_text().split() == list(PINS):
        return python
    log(f"creating {venv} with {' '.join(PINS)} (once; about a minute)")
    commands = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "--quiet", *PINS]]
    for command in commands:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AdapterHubUnavailable(f"`{' '.join(command[:4])}` failed: {err}") from None
        if done.returncode != 0:
            raise AdapterHubUnavailable(
                f"`{' '.join(command[:4])}` exited {done.returncode}: {_last_lines(done.stderr or done.stdout)}"
            )
    marker.write_text(" ".join(PINS))
    return python


def measure(
    python: Path, spec: dict[str, Any], batches: dict[str, dict[str, torch.Tensor]], timeout_s: float = 900
) -> dict[str, Any]:
    """Runs the worker with `python` on `spec` (the worker's settings) and `batches`; returns its JSON result
    or raises AdapterHubUnavailable with the worker's error."""
    with tempfile.TemporaryDirectory(prefix="mtllora-adapterhub-") as tmp:
        batches_path, spec_path, out_path = Path(tmp, "batches.pt"), Path(tmp, "spec.json"), Path(tmp, "out.json")
        torch.save({name: {k: v.cpu() for k, v in b.items()} for name, b in batches.items()}, batches_path)
        spec_path.write_text(json.dumps({**spec, "batches": str(batches_path)}))
        try:
            done = subprocess.run(
                [str(python), str(WORKER), str(spec_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AdapterHubUnavailable(f"worker failed: {err}") from None
        if done.returncode != 0 or not out_path.exists():
            raise AdapterHubUnavailable(f"worker exited {done.returncode}: {_last_lines(done.stderr)}")
        return json.loads(out_path.read_text())
