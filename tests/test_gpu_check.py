"""The prepared device check (scripts/gpu-check.sh) in its CPU mode, end to end, its helpers and the install plan of
its wheel tool (scripts/gpu_wheels.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # the check and its wheel tool, as `python scripts/gpu_check.py` sees them
import gpu_check  # noqa: E402
import gpu_wheels  # noqa: E402


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_WORK": str(out / "work"),
        "GPU_CHECK_WHEELS": str(out / "no-wheels"),  # this machine has every package
    }
    env.pop("OUT", None)
    result = subprocess.run(
        ["bash", "scripts/gpu-check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
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
    ok = gpu_check.compare_generations(
        [[6, 5]], single, [[near_tie + 2e-3 * (torch.arange(8) == 6), vocab]], logits_s, 0.01
    )
    assert ok["ok"] and ok["equal"] == 0 and len(ok["ties"]) == 1 and ok["ties"][0]["step"] == 0
    # The same divergence with logits that disagree beyond the tolerance is a failure (e.g. the wrong task).
    wrong = gpu_check.compare_generations([[6, 5]], single, [[vocab.flip(0), vocab]], logits_s, 0.01)
    assert not wrong["ok"]
    same = gpu_check.compare_generations([[7, 7]], single, logits_s, logits_s, 0.01)
    assert same["ok"] and same["equal"] == 1 and same["max_rel_diff"] == 0


def test_loss_fell_needs_a_clear_drop():
    assert gpu_check.loss_fell([2.0] * 4 + [1.5] * 4 + [1.0] * 4)[0]
    assert not gpu_check.loss_fell([2.0, 1.9, 2.1, 2.0, 1.95, 2.05, 1.9, 2.0])[0]
    assert not gpu_check.loss_fell([2.0, 1.0])[0]  # too few points to tell


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
