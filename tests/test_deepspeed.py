"""DeepSpeed on CPU: adapter-only checkpoints, resume after a kill, ZeRO-3 on two ranks equal to one process, and one
process without DeepSpeed's shared-memory all-reduce."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .test_train import cli, overrides, run_process

DEEPSPEED = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2", "--master_port", "29521", "--module"]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter.safetensors")


def test_zero2_checkpoints_hold_adapters_only_and_resume_after_a_kill(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    base = [
        *overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=mtl_lora", "deepspeed=zero2"),
        "trainer.max_steps=8",
        "trainer.save_steps=4",
        "method.adapter.dropout=0.1",
    ]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    result = cli([*base, f"hydra.run.dir={straight}"], launcher=DEEPSPEED)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    states = torch.load(straight / "checkpoint-4" / "global_step4" / "mp_rank_00_model_states.pt", weights_only=False)
    assert set(states["module"]) == set(_adapter(straight)), "the DeepSpeed checkpoint must hold the adapters only"
    assert not any("embeddings" in name for name in states["module"])

    kill = "trainer.callbacks=[{_target_:tests.callbacks.KillAtStep,step:6}]"
    killed = cli([*base, f"hydra.run.dir={interrupted}", kill], launcher=DEEPSPEED)
    assert killed.returncode != 0 and not (interrupted / "metrics.json").exists()
    assert (interrupted / "checkpoint-4" / "COMPLETE").exists()
    resumed = cli([*base, f"hydra.run.dir={interrupted}", "trainer.resume=true"], launcher=DEEPSPEED)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    metrics = json.loads((interrupted / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] == "checkpoint-4" and metrics["train"]["steps"] == 8

    a, b = _adapter(straight), _adapter(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_one_cpu_process_skips_the_shared_memory_allreduce_with_equal_weights(
    tiny_encoder_dir, tiny_glue_dir, tmp_path
):
    base = [
        *overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=mtl_lora", "deepspeed=zero2"),
        "trainer.max_steps=6",
    ]
    skipped = cli([*base, f"hydra.run.dir={tmp_path / 'skipped'}"])
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    # The same run with DeepSpeed's op built and loaded, as before the skip.
    build = (
        "import mtllora.training_args as a, mtllora.train as t; "
        "a._skip_shared_memory_allreduce = lambda: None; t.main()"
    )
    built = run_process([sys.executable, "-c", build, *base, f"hydra.run.dir={tmp_path / 'built'}"], timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    loaded = "deepspeed_shm_comm_op built successfully"
    assert loaded not in skipped.stdout + skipped.stderr and loaded in built.stdout + built.stderr
    a, b = _adapter(tmp_path / "skipped"), _adapter(tmp_path / "built")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("method", ["dora", "mtl_lora"])
def test_zero3_on_two_ranks_equals_one_process(method, tiny_encoder_no_dropout_dir, tiny_glue_dir, tmp_path):
    # No dropout anywhere, and the same global batch of 16 (at most 8 per device): one process accumulates two
    # micro-batches of 8, two ranks take 8 each; the same computation, one epoch of the same number of steps.
    base = [
        *overrides(tiny_encoder_no_dropout_dir, tiny_glue_dir, tmp_path, f"method={method}"),
        "method.adapter.dropout=0.0",
        "trainer.max_steps=-1",
        "trainer.num_train_epochs=1",
        "trainer.global_train_batch_size=16",
        "trainer.logging_steps=1",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    record = "trainer.callbacks=[{{_target_:tests.callbacks.RecordLosses,path:{}}}]"
    single = cli([*base, "deepspeed=none", f"hydra.run.dir={one}", record.format(one / "losses.json")])
    assert single.returncode == 0, single.stderr[-3000:]
    # Every weight partitioned and released right after use (by default small ones stay whole on every rank and
    # soon-reused ones are kept), so that a read outside the base layer's forward would see an empty partition.
    zero3 = ["deepspeed=zero3"] + [
        f"+deepspeed.config.zero_optimization.{key}=0"
        for key in ("stage3_param_persistence_threshold", "stage3_max_reuse_distance", "stage3_prefetch_bucket_size")
    ]
    ranks = cli([*base, *zero3, f"hydra.run.dir={two}", record.format(two / "losses.json")], launcher=DEEPSPEED)
    assert ranks.returncode == 0, (ranks.stdout + ranks.stderr)[-3000:]

    train_one, train_two = (json.loads((d / "metrics.json").read_text())["train"] for d in (one, two))
    layout = ("global_batch_size", "per_device_batch_size", "gradient_accumulation_steps", "world_size")
    assert [train_one[k] for k in layout] == [16, 8, 2, 1] and [train_two[k] for k in layout] == [16, 8, 1, 2]
    assert train_one["steps"] == train_two["steps"] == 240 // 16  # 5 tiny GLUE tasks × 48 training rows
    losses_one, losses_two = (json.loads((d / "losses.json").read_text()) for d in (one, two))
    assert len(losses_one) == len(losses_two) == 15
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(losses_one), rtol=1e-4, atol=1e-5)
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys()
    for name in a:
        assert b[name].shape == a[name].shape, name  # gathered, not a rank's partition
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dora_gathers_partitioned_base_parameters_for_its_norms_and_bias(monkeypatch):
    # Under ZeRO-3 a base weight is whole only inside the base layer's own forward; DoRA also reads W (norms) and
    # b afterwards, so it must gather them (as PEFT does). Marked partitioned by hand, with a recording gatherer.
    import deepspeed

    from mtllora.adapters import apply_adapters

    from .conftest import make_config

    model = torch.nn.Sequential(torch.nn.Linear(8, 6))
    apply_adapters(model, make_config("dora", target_modules=["0"]))
    gathered = []

    class RecordingGather:
        def __init__(self, params, modifier_rank=None):
            gathered.append((list(params), modifier_rank))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", RecordingGather)
    base = model[0].base_layer
    model(torch.randn(2, 8))
    assert gathered == []  # not partitioned: nothing to gather
    for param in base.parameters():
        param.ds_id = 0
    model(torch.randn(2, 8))
    assert len(gathered) == 1 and gathered[0][1] is None
    assert [id(p) for p in gathered[0][0]] == [id(base.weight), id(base.bias)]
