"""MTL-LoRA's ablation switches (issue 21): each removes exactly its part, on both forward paths, through merging,
the PEFT form and save/load; and each ablation config composes, overriding only its part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel

from mtllora.adapters import (
    AdapterConfig,
    adapter_state_dict,
    apply_adapters,
    count_parameters,
    load_adapter,
    merge_task,
    save_adapter,
)
from mtllora.adapters.convert import save_peft
from mtllora.configs import CONFIG_DIR
from speed.formulations import official_mtl_lora

from ..conftest import NUM_TASKS as LLAMA_TASKS
from ..conftest import make_config, randomize_adapters, tiny_llama
from ..test_configs import _compose, _minilm_parameter_count
from .test_mtl_lora_grouped import NUM_TASKS, NUM_UP, VARIANTS, R, layer_model

# (Both forward paths give every variant the same outputs and gradients: test_mtl_lora_grouped.py.)
METHOD_DIR = Path(CONFIG_DIR) / "method"
ABLATION_CONFIGS = sorted(p.stem for p in METHOD_DIR.glob("mtl_lora_*.yaml"))


def _oracle(layer, x: torch.Tensor, ids: torch.Tensor, lambdas: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The official formulation (the bench's oracle) on the layer's A and B with the given Λ [T, ...] and logits."""
    args = (layer.base_layer, layer.lora_A.unsqueeze(0), lambdas, layer.lora_B, logits)
    return official_mtl_lora(x, ids, *args, layer.scaling, layer.options.temperature)


def _step(model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor, steps: int = 1) -> None:
    """`steps` AdamW steps on the mean squared output over every parameter the model has (buffers have none)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x, task_ids=ids).pow(2).mean().backward()
        optimizer.step()


def _inputs(batch_ids=(0, 1, 2, 3, 0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(batch_ids)
    return torch.randn(len(ids), 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), ids


def test_no_lambda_fixes_lambda_at_the_identity_and_is_the_mixture_alone():
    model = layer_model(lambda_type="identity")
    layer = model.proj
    eye = torch.eye(R, dtype=torch.float64).expand(NUM_TASKS, R, R)
    assert dict(layer.named_parameters(recurse=False)).keys() == {"lora_A", "lora_B", "lora_B_weight"}
    assert torch.equal(layer.lora_lambda, eye) and not layer.lora_lambda.requires_grad
    x, ids = _inputs()
    _step(model, x, ids, steps=3)
    assert torch.equal(layer.lora_lambda, eye)  # trained three steps: still the identity
    with torch.no_grad():
        expected = _oracle(layer, x, ids, eye, layer.lora_B_weight)
        # Λ = I: each task's update is s (Σ_i p_ti B_i) A, the mixture of the shared up-projections only.
        for t in range(NUM_TASKS):
            mixture = torch.einsum("n,nor->or", layer.mixing_weights()[t], layer.lora_B)
            torch.testing.assert_close(layer.delta_weight(t), layer.scaling * mixture @ layer.lora_A)
        torch.testing.assert_close(model(x, task_ids=ids), expected, rtol=1e-12, atol=1e-12)


def test_one_up_projection_is_lambda_alone_and_its_logits_learn_nothing():
    model = layer_model(num_up=1)
    layer = model.proj
    assert layer.lora_B.shape == (1, 10, R) and torch.equal(layer.mixing_weights(), torch.ones(NUM_TASKS, 1).double())
    x, ids = _inputs()
    model(x, task_ids=ids).pow(2).mean().backward()
    assert torch.count_nonzero(layer.lora_B_weight.grad) == 0  # softmax over one logit: p = 1 whatever w
    assert torch.count_nonzero(layer.lora_lambda.grad) > 0
    with torch.no_grad():
        for t in range(NUM_TASKS):  # ΔW_t = s B Λ_t A
            expected = layer.scaling * layer.lora_B[0] @ layer.lora_lambda[t] @ layer.lora_A
            torch.testing.assert_close(layer.delta_weight(t), expected, rtol=1e-12, atol=1e-12)


def test_uniform_mixture_weights_stay_equal_untrained_and_the_up_projections_stay_equal():
    model = layer_model(mixing="uniform")
    layer = model.proj
    assert dict(layer.named_parameters(recurse=False)).keys() == {"lora_A", "lora_lambda", "lora_B"}
    assert torch.equal(layer.lora_B_weight, torch.zeros(NUM_TASKS, NUM_UP, dtype=torch.float64))
    # 1/n as the fp32 softmax gives it, for every task and up-projection.
    assert torch.equal(layer.mixing_weights(), torch.full((NUM_TASKS, NUM_UP), 1 / NUM_UP).double())
    x, ids = _inputs()
    with torch.no_grad():
        logits = torch.zeros(NUM_TASKS, NUM_UP, dtype=torch.float64)
        torch.testing.assert_close(model(x, task_ids=ids), _oracle(layer, x, ids, layer.lora_lambda, logits))
    # From the official init (B_i = 0) equal weights give the B_i equal gradients: they never differ, unlike with
    # learned (random) logits.
    trained = {}
    for mixing in ("uniform", "learned"):
        fresh = layer_model(randomize=False, mixing=mixing)
        _step(fresh, x, ids, steps=3)
        trained[mixing] = fresh.proj
    assert torch.count_nonzero(trained["uniform"].lora_B[0]) > 0
    assert torch.equal(trained["uniform"].lora_B[0], trained["uniform"].lora_B[1])
    assert torch.equal(trained["uniform"].lora_B[0], trained["uniform"].lora_B[2])
    assert torch.equal(trained["uniform"].lora_B_weight, torch.zeros_like(trained["uniform"].lora_B_weight))
    assert not torch.equal(trained["learned"].lora_B[0], trained["learned"].lora_B[1])


def test_uniform_mixture_draws_the_random_stream_of_full_mtl_lora():
    """The same seed gives the same A in every layer as full MTL-LoRA (the logits are drawn, then fixed at 0)."""
    models = {}
    for mixing in ("uniform", "learned"):
        torch.manual_seed(0)
        models[mixing] = apply_adapters(tiny_llama(), make_config("mtl_lora", mixing=mixing))
    a_of = {
        mixing: {k: v for k, v in adapter_state_dict(m).items() if k.endswith("lora_A")} for mixing, m in models.items()
    }
    assert len(a_of["uniform"]) == 8 and all(
        torch.equal(a_of["uniform"][k], a_of["learned"][k]) for k in a_of["learned"]
    )


@pytest.mark.parametrize("lambda_type", ["full", "diagonal"])
def test_shared_lambda_is_one_tensor_for_every_task_and_sums_their_gradients(lambda_type):
    shared = layer_model(shared_lambda=True, lambda_type=lambda_type)
    layer = shared.proj
    assert layer.lora_lambda.shape == ((1, R, R) if lambda_type == "full" else (1, R))
    assert all(torch.equal(lam, layer.lambdas()[0]) for lam in layer.lambdas())
    # The same model with one Λ per task, each a copy of the shared one: same outputs, and the shared Λ's gradient
    # is the sum of the per-task ones.
    per_task = layer_model(lambda_type=lambda_type)
    per_task_layer = per_task.proj
    with torch.no_grad():
        per_task_layer.lora_lambda.copy_(layer.lora_lambda.expand_as(per_task_layer.lora_lambda))
        for name in ("lora_A", "lora_B", "lora_B_weight"):
            getattr(per_task_layer, name).copy_(getattr(layer, name))
    x, ids = _inputs()
    out_shared, out_per_task = shared(x, task_ids=ids), per_task(x, task_ids=ids)
    torch.testing.assert_close(out_shared, out_per_task, rtol=1e-12, atol=1e-12)
    out_shared.pow(2).sum().backward()
    out_per_task.pow(2).sum().backward()
    torch.testing.assert_close(layer.lora_lambda.grad[0], per_task_layer.lora_lambda.grad.sum(0))
    # After a step every task still has the same Λ, and the tasks differ by their mixing only.
    _step(shared, x, ids)
    assert all(torch.equal(lam, layer.lambdas()[0]) for lam in layer.lambdas())
    assert not torch.equal(layer.lambdas()[0], torch.eye(R, dtype=torch.float64))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merge_task_and_the_peft_export_give_each_tasks_outputs(variant, tmp_path):
    model = apply_adapters(tiny_llama(), make_config("mtl_lora", **VARIANTS[variant]))
    randomize_adapters(model)
    tokens = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    for task in range(LLAMA_TASKS):
        peft = PeftModel.from_pretrained(tiny_llama(), save_peft(model, tmp_path / str(task), task_id=task))
        with torch.no_grad():
            adapted = model(input_ids=tokens, task_ids=torch.full((2,), task)).logits
            merged = merge_task(model, task)(input_ids=tokens).logits
            exported = peft(input_ids=tokens).logits
        torch.testing.assert_close(merged, adapted, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(exported, adapted, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_and_load_round_trip_keeps_only_the_trained_tensors(variant, tmp_path):
    options = VARIANTS[variant]
    model = apply_adapters(tiny_llama(), make_config("mtl_lora", **options))
    randomize_adapters(model)
    saved = adapter_state_dict(model)
    fixed = {"lora_lambda"} if options.get("lambda_type") == "identity" else set()
    fixed |= {"lora_B_weight"} if options.get("mixing") == "uniform" else set()
    layer_tensors = {key.rpartition(".")[2] for key in saved}
    assert layer_tensors == {"lora_A", "lora_lambda", "lora_B", "lora_B_weight"} - fixed
    # DeepSpeed checkpoints hold the model's state dict less its frozen parameters; the fixed buffers are not in it
    # either (non-persistent), so the checkpoint holds exactly the saved tensors.
    assert {k for k in model.state_dict() if ".lora_" in k} == set(saved)
    save_adapter(model, tmp_path / "adapter.safetensors")
    loaded = load_adapter(tiny_llama(), tmp_path / "adapter.safetensors")
    tokens = torch.randint(3, 64, (4, 7), generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=tokens, task_ids=ids).logits, model(input_ids=tokens, task_ids=ids).logits, rtol=0, atol=0
        )
    assert all(torch.equal(adapter_state_dict(loaded)[k], v) for k, v in saved.items())


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"unknown mixing 'equal'; expected one of \('learned', 'uniform'\)"):
        make_config("mtl_lora", mixing="equal")
    with pytest.raises(ValueError, match="shared_lambda must be true or false, got 'yes'"):
        make_config("mtl_lora", shared_lambda="yes")
    with pytest.raises(
        ValueError, match=r"unknown lambda_type 'eye'; expected one of \('full', 'diagonal', 'identity'"
    ):
        make_config("mtl_lora", lambda_type="eye")


# MiniLM-L6 on the GLUE CPU profiles: q, k, v, o of 6 layers (24 layers of 384 × 384), r = 8, T = 5 tasks.
LAYERS, D, T = 24, 384, 5
MINILM_COUNTS = {
    "mtl_lora": LAYERS * (R * D + 3 * R * D + T * R * R + T * 3),  # 302,952
    "mtl_lora_no_lambda": LAYERS * (R * D + 3 * R * D + T * 3),  # 295,272
    "mtl_lora_n1": LAYERS * (R * D + R * D + T * R * R + T),  # 155,256
    "mtl_lora_uniform_mix": LAYERS * (R * D + 3 * R * D + T * R * R),  # 302,592
    "mtl_lora_shared_lambda": LAYERS * (R * D + 3 * R * D + R * R + T * 3),  # 296,808
    "mtl_lora_diag": LAYERS * (R * D + 3 * R * D + T * R + T * 3),  # 296,232
    "mtl_lora_tau0.5": LAYERS * (R * D + 3 * R * D + T * R * R + T * 3),
    "mtl_lora_tau1": LAYERS * (R * D + 3 * R * D + T * R * R + T * 3),
    "mtl_lora_n5": LAYERS * (R * D + 5 * R * D + T * R * R + T * 5),  # 450,648
}


def test_every_ablation_config_has_its_parameter_count():
    assert sorted(MINILM_COUNTS) == sorted(["mtl_lora", *ABLATION_CONFIGS])
    assert {method: _minilm_parameter_count(method) for method in MINILM_COUNTS} == MINILM_COUNTS
    assert MINILM_COUNTS["mtl_lora_n1"] == 155_256 and MINILM_COUNTS["mtl_lora_n5"] == 450_648


def test_a_model_counts_no_fixed_tensor():
    counts = {name: count_parameters(layer_model(**opts)) for name, opts in [("full", {}), *VARIANTS.items()]}
    base = 12 * 10 + 10
    assert counts["no Λ_t"].total == counts["full"].total - NUM_TASKS * R * R == base + counts["no Λ_t"].trainable
    assert counts["uniform mixture"].trainable == counts["full"].trainable - NUM_TASKS * NUM_UP


@pytest.mark.parametrize("experiment", ["glue_cpu_2ep", "glue_ci"])
@pytest.mark.parametrize("method", ABLATION_CONFIGS)
def test_each_ablation_config_composes_and_overrides_only_its_part(method, experiment):
    cfg = OmegaConf.to_container(_compose(f"experiment={experiment}", f"method={method}"), resolve=True)["method"]
    full = OmegaConf.to_container(_compose(f"experiment={experiment}", "method=mtl_lora"), resolve=True)["method"]
    own = OmegaConf.load(METHOD_DIR / f"{method}.yaml")
    assert cfg["name"] == method and cfg["label"].startswith("MTL-LoRA (")
    changed = {
        key
        for key in cfg["adapter"].keys() | full["adapter"].keys()
        if cfg["adapter"].get(key) != full["adapter"].get(key)
    }
    assert changed == set(own.adapter) and len(changed) == 1
    assert cfg["recipe"] == full["recipe"]
    AdapterConfig.from_dict(cfg["adapter"])


def test_every_method_config_has_its_own_name_and_row_label():
    methods = [OmegaConf.load(path) for path in sorted(METHOD_DIR.glob("*.yaml"))]
    names, labels = [m.name for m in methods], [m.label for m in methods]
    assert len(set(names)) == len(names) and len(set(labels)) == len(labels)
    assert [m.name for m in methods] == [p.stem for p in sorted(METHOD_DIR.glob("*.yaml"))]
