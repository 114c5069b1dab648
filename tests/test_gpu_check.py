"""The prepared device check (scripts/gpu-check.sh, its tests in tests/gpu) in its CPU mode, end to end: files, JSON,
exit statuses; its helpers; the TrainingArguments shim for older transformers; and the install plan of its wheel
tool (scripts/gpu_wheels.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from .gpu import checks, train_compat
from .test_compat import compat_overlay

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # the wheel tool, as `python scripts/gpu_wheels.py` sees itself
import gpu_wheels  # noqa: E402


def check_env(out: Path, **extra: str) -> dict[str, str]:
    """The environment of a CPU-mode check writing into `out` (this machine has every package: no wheels)."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_WORK": str(out / "work"),
        "GPU_CHECK_WHEELS": str(out / "no-wheels"),
        **extra,
    }
    env.pop("OUT", None)
    return env


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    result = subprocess.run(
        ["bash", "scripts/gpu-check.sh"], cwd=REPO, env=check_env(out), capture_output=True, text=True, timeout=600
    )
    return out, result


def test_cpu_mode_passes_and_writes_every_file(cpu_run):
    out, result = cpu_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "gpu-check PASSED (cpu)" in result.stdout
    for name in ("gpu-check.json", "gpu-check.log", "bench.json", "bench.md", "bench.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "gpu-check.json").read_text())
    assert data["ok"] is True and data["complete"] and data["failed"] == [] and data["meta"]["mode"] == "cpu"
    assert set(data["checks"]) == {"fixtures", "bench", "train", "generation"}
    # Every check ran as a test marked gpu, and the log holds the steps' output and pytest's.
    assert "4 passed" in result.stdout and "PASSED" in (out / "gpu-check.log").read_text()
    assert "===== train (zero2): rc 0" in (out / "gpu-check.log").read_text()


def test_cpu_mode_bench_rows(cpu_run):
    data = json.loads((cpu_run[0] / "gpu-check.json").read_text())
    bench = data["checks"]["bench"]
    assert bench["ok"] and bench["summary"]["meta"]["device"] == "cpu"
    suites = bench["summary"]["suites"]
    assert set(suites) == {"layer-64", "layer-32", "minilm", "llama"}
    for suite in suites.values():
        for key in ("base", "lora", "dora", "multilora", "moelora", "mtl_lora", "mtl_lora_diag"):
            row = suite["rows"][key]
            assert row["status"] == "ok" and row["median_ms"] > 0 and row["vs_base"] > 0, (key, row)


def test_cpu_mode_training_loss_falls_through_the_engine(cpu_run):
    train = json.loads((cpu_run[0] / "gpu-check.json").read_text())["checks"]["train"]
    assert train["ok"] and train["deepspeed"] == "zero2" and not train["compat"]
    losses = train["losses"]
    assert len(losses) == 60 and train["loss_window"]["last_mean"] < 0.85 * train["loss_window"]["first_mean"]
    metrics = train["metrics"]
    assert metrics["method"] == "mtl_lora" and metrics["train"]["steps"] == 60
    assert metrics["task_order"] == ["cola", "sst2", "mrpc", "stsb", "rte"] and metrics["train"]["precision"] == "fp32"
    assert 0 < metrics["params"]["trainable"] < metrics["params"]["total"]


def test_cpu_mode_batched_generation_equals_one_by_one(cpu_run):
    gen = json.loads((cpu_run[0] / "gpu-check.json").read_text())["checks"]["generation"]
    assert gen["ok"]
    fp32, bf16 = gen["float32"], gen["bfloat16"]
    assert fp32["equal"] == fp32["samples"] == 6 and fp32["batched_tokens"] == fp32["single_tokens"]
    assert fp32["max_rel_diff"] < 1e-3
    assert bf16["equal"] + len(bf16["ties"]) == bf16["samples"] and not bf16["mismatches"]
    for g in (fp32, bf16):
        assert len(set(g["prompt_lengths"])) > 1 and len(set(g["task_ids"])) == 4  # padded, mixed tasks
        assert g["control"]["changed_by_task_ids"] > 0 and g["control_ok"]


# --- helpers -----------------------------------------------------------------------------------------------------


def test_compare_generations_accepts_rounding_ties_only():
    vocab = torch.arange(8, dtype=torch.float32)  # std 2.45; token 7 leads token 6 by 1.0
    near_tie = vocab.clone()
    near_tie[6] = 7.0 - 1e-3  # 6 and 7 within rounding
    single = [[7, 7]]
    logits_s = [[near_tie, vocab]]
    ok = checks.compare_generations(
        [[6, 5]], single, [[near_tie + 2e-3 * (torch.arange(8) == 6), vocab]], logits_s, 0.01
    )
    assert ok["ok"] and ok["equal"] == 0 and len(ok["ties"]) == 1 and ok["ties"][0]["step"] == 0
    # The same divergence with logits that disagree beyond the tolerance is a failure (e.g. the wrong task).
    wrong = checks.compare_generations([[6, 5]], single, [[vocab.flip(0), vocab]], logits_s, 0.01)
    assert not wrong["ok"]
    same = checks.compare_generations([[7, 7]], single, logits_s, logits_s, 0.01)
    assert same["ok"] and same["equal"] == 1 and same["max_rel_diff"] == 0


def test_loss_fell_needs_a_clear_drop():
    assert checks.loss_fell([2.0] * 4 + [1.5] * 4 + [1.0] * 4)[0]
    assert not checks.loss_fell([2.0, 1.9, 2.1, 2.0, 1.95, 2.05, 1.9, 2.0])[0]
    assert not checks.loss_fell([2.0, 1.0])[0]  # too few points to tell


def test_a_bad_setting_is_a_usage_error_and_writes_no_result(tmp_path):
    for setting, message in [
        ({"GPU_CHECK_STEPS": "bench,trian"}, "unknown step 'trian' in GPU_CHECK_STEPS (bench, train, generation)"),
        ({"GPU_CHECK_DEVICE": "tpu"}, "GPU_CHECK_DEVICE must be auto, cuda or cpu, got 'tpu'"),
    ]:
        env = check_env(tmp_path, **setting)
        result = subprocess.run(["bash", "scripts/gpu-check.sh"], cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stdout, (setting, result.stdout[-2000:])
        assert not (tmp_path / "gpu-check.json").exists()


def test_a_failed_step_fails_the_check_and_a_stop_leaves_it_incomplete(tmp_path):
    # A bench of an unknown suite exits 2: the check fails with that reason (exit status 1).
    env = check_env(tmp_path / "failed", GPU_CHECK_STEPS="bench", GPU_CHECK_BENCH_SUITES="bogus")
    result = subprocess.run(["bash", "scripts/gpu-check.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "gpu-check FAILED: bench (cpu)" in result.stdout
    data = json.loads((tmp_path / "failed" / "gpu-check.json").read_text())
    assert data["complete"] and data["ok"] is False and data["failed"] == ["bench"]
    assert data["checks"]["bench"]["rc"] == 2 and data["checks"]["bench"]["detail"].startswith("exit status 2")
    assert data["checks"]["fixtures"]["ok"] and set(data["checks"]) == {"fixtures", "bench"}
    # A SIGTERM (the device tool's limit, `timeout`) while a step runs: exit status 124, the step's process group
    # killed, the file marked incomplete.
    out = tmp_path / "stopped"
    env = check_env(out, GPU_CHECK_STEPS="train")
    proc = subprocess.Popen(["bash", "scripts/gpu-check.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    log = out / "gpu-check.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "===== train (zero2)" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 124 and "stopped by signal 15" in stdout, stdout[-3000:]
    data = json.loads((out / "gpu-check.json").read_text())
    assert data["complete"] is False and "failed" not in data and data["checks"]["fixtures"]["ok"]
    assert not (out / "work" / "train-zero2" / "metrics.json").exists()


def test_train_compat_maps_renamed_keywords_and_drops_unknown_ones(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "__init__", TrainingArguments.__init__)  # restored afterwards
    monkeypatch.setitem(train_compat.OLDER_NAMES, "renamed_seed", "seed")
    record = tmp_path / "shims.json"
    train_compat.shim_training_arguments(record)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", renamed_seed=7, surely_unknown=1)
    assert args.seed == 7
    assert json.loads(record.read_text()) == [
        "TrainingArguments(renamed_seed=7) passed as seed=7",
        "TrainingArguments(surely_unknown=1) dropped: unknown to this transformers",
    ]


def test_train_compat_passes_activation_checkpointing_to_transformers_5_17(tmp_path):
    # The GPU machines' transformers (5.17) knows only gradient_checkpointing.
    overlay = compat_overlay()
    script = textwrap.dedent(
        f"""
        import json, transformers
        from pathlib import Path
        from transformers import TrainingArguments
        from tests.gpu.train_compat import shim_training_arguments
        assert transformers.__version__ == "5.17.0", transformers.__version__
        shim_training_arguments(Path({str(tmp_path / "shims.json")!r}))
        args = TrainingArguments(output_dir={str(tmp_path)!r}, report_to="none", activation_checkpointing=True)
        print(json.dumps([args.gradient_checkpointing, json.loads(Path({str(tmp_path / "shims.json")!r}).read_text())]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(overlay), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        True,
        ["TrainingArguments(activation_checkpointing=True) passed as gradient_checkpointing=True"],
    ]


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n{meta}")
    return path


def test_install_plan_installs_what_is_missing_or_out_of_range(tmp_path):
    import importlib.metadata

    # pytest and packaging are installed here (pytest >= 1); the missing package pins pytest < 1.
    missing = _fake_wheel(tmp_path, "surely-not-installed-pkg", "1.0", ["pytest<1", "packaging>=1", "absent-dep>=2"])
    pinned = _fake_wheel(tmp_path, "pytest", "0.1")
    keep = _fake_wheel(tmp_path, "packaging", importlib.metadata.version("packaging"))
    install, kept, warnings = gpu_wheels.plan_install([missing, pinned, keep])
    assert install == [pinned, missing]
    assert any(line.startswith("packaging") and "machine's own" in line for line in kept)
    assert any(line.startswith("pytest") and "replaced" in line and "surely-not-installed-pkg" in line for line in kept)
    assert warnings == ["surely-not-installed-pkg needs absent-dep>=2, which the machine lacks"]


def test_install_plan_leaves_what_the_machine_has_with_its_own_dependencies(tmp_path):
    import importlib.metadata

    # The machine has pytest, so the carried pytest's pin of packaging must not replace the machine's packaging.
    version = importlib.metadata.version("pytest")
    carried_pytest = _fake_wheel(tmp_path, "pytest", version, ["packaging==0.0.1"])
    carried_packaging = _fake_wheel(tmp_path, "packaging", "0.0.1")
    install, kept, warnings = gpu_wheels.plan_install([carried_pytest, carried_packaging])
    assert install == [] and warnings == [] and all("machine's own" in line for line in kept)


def test_install_plan_refuses_torch_and_transformers(tmp_path):
    with pytest.raises(SystemExit, match="transformers"):
        gpu_wheels.plan_install([_fake_wheel(tmp_path, "transformers", "5.0")])
