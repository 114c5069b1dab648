"""Official MTL-LoRA checkpoint import, PEFT export (every method) and import, parameter counts against the spec."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from mtllora.adapters import (
    AdapterConfig,
    TaskIdError,
    apply_adapters,
    count_parameters,
    get_adapter_config,
    load_adapter_state_dict,
    use_tasks,
)
from mtllora.adapters.convert import from_official_mtl_lora, load_official_checkpoint, load_peft, save_peft
from speed.formulations import official_mtl_lora

from ..conftest import (
    ALL_METHODS,
    LLAMA_TARGETS,
    NUM_TASKS,
    TASK_AWARE,
    adapted,
    make_config,
    randomize_adapters,
    tiny_llama,
)

R, N_UP, T = 8, 3, 3


def _official_state_dict(model, lambda_type="full", seed=0):
    """A state dict in the official `final_checkpoint.pt` layout (mLoRALinear: lora_A [1, r, in],
    lora_lambdas [T, r, r] or [T, r], lora_B [n, out, r], lora_B_w [T, n]), with random values."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LLAMA_TARGETS:
            d_in, d_out = module.in_features, module.out_features
            lam_shape = (T, R, R) if lambda_type == "full" else (T, R)
            for key, shape in [
                ("lora_A", (1, R, d_in)),
                ("lora_lambdas", lam_shape),
                ("lora_B", (N_UP, d_out, R)),
                ("lora_B_w", (T, N_UP)),
            ]:
                state[f"{name}.{key}"] = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3
    return state


def _official_forward(state, module_name, base_layer, x, ids, temperature):
    """The official mLoRALinear forward (the bench's oracle) on the checkpoint's tensors."""
    official = [state[f"{module_name}.{key}"] for key in ("lora_A", "lora_lambdas", "lora_B", "lora_B_w")]
    return official_mtl_lora(x, ids, base_layer, *official, scaling=16 / R, temperature=temperature)


@pytest.mark.parametrize("lambda_type", ["full", "diagonal"])
def test_official_checkpoint_imports_with_identical_layer_outputs(lambda_type, tmp_path):
    base = tiny_llama()
    official = _official_state_dict(base, lambda_type)
    torch.save(official, tmp_path / "final_checkpoint.pt")
    model = apply_adapters(base, make_config("mtl_lora", num_up=N_UP, temperature=0.1, lambda_type=lambda_type))
    load_official_checkpoint(model, tmp_path / "final_checkpoint.pt")
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1])
    for name in ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj"]:
        layer = model.get_submodule(name)
        with use_tasks(model, ids), torch.no_grad():
            ours = layer(x)
        expected = _official_forward(official, name, layer.base_layer, x, ids, 0.1)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_official_import_rejects_foreign_keys_and_shapes():
    with pytest.raises(ValueError, match="lora_scaler: not an official mLoRALinear parameter"):
        from_official_mtl_lora({"model.layers.0.self_attn.q_proj.lora_scaler": torch.zeros(())})
    with pytest.raises(ValueError, match=r"official lora_A has shape \[1, r, in\], got \(8, 32\)"):
        from_official_mtl_lora({"q_proj.lora_A": torch.zeros(8, 32)})
    model = apply_adapters(tiny_llama(), make_config("mtl_lora", num_up=2))  # the checkpoint has n=3
    with pytest.raises(ValueError, match=r"lora_B: state dict has shape \(3, 32, 8\).*expects \(2, 32, 8\)"):
        load_adapter_state_dict(model, from_official_mtl_lora(_official_state_dict(tiny_llama())))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_save_peft_loads_in_peft_with_the_same_outputs_for_every_task(method, tmp_path):
    model = adapted(method)
    ids = torch.randint(3, 64, (2, 6))
    tasks = range(NUM_TASKS) if method in TASK_AWARE else [None]
    for task in tasks:
        folder = save_peft(model, tmp_path / f"task{task}", task_id=task)
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["use_dora"] == (method == "dora")
        assert config["r"] == (3 * 8 if method == "multilora" else 8)
        assert config["lora_alpha"] / config["r"] == 16 / 8  # PEFT's scaling is ours
        peft = PeftModel.from_pretrained(tiny_llama(), folder)
        expected = model(input_ids=ids, task_ids=torch.tensor([task, task]) if task is not None else None).logits
        torch.testing.assert_close(peft(input_ids=ids).logits, expected, rtol=1e-10, atol=1e-10)


def test_per_task_peft_adapters_serve_a_mixed_task_batch_like_the_model(tmp_path):
    """PEFT's mixed-adapter inference (`adapter_names=`), one adapter per task, equals MTL-LoRA's task ids."""
    model = adapted("mtl_lora")
    peft = None
    for task in range(NUM_TASKS):
        folder = save_peft(model, tmp_path / str(task), task_id=task)
        if peft is None:
            peft = PeftModel.from_pretrained(tiny_llama(), folder, adapter_name=str(task))
        else:
            peft.load_adapter(folder, adapter_name=str(task))
    ids, tasks = torch.randint(3, 64, (4, 6)), [2, 0, 1, 2]
    expected = model(input_ids=ids, task_ids=torch.tensor(tasks)).logits
    got = peft(input_ids=ids, adapter_names=[str(t) for t in tasks]).logits
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_save_peft_needs_the_task_of_a_task_aware_method(tmp_path):
    with pytest.raises(ValueError, match=r"mtl_lora exports one task at a time; pass task_id in 0..2"):
        save_peft(adapted("mtl_lora"), tmp_path / "x")
    with pytest.raises(TaskIdError, match="task id 3 is out of range"):
        save_peft(adapted("moelora"), tmp_path / "x", task_id=3)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_peft_adapter_folder_imports_with_the_same_outputs(method, tmp_path):
    peft = get_peft_model(
        tiny_llama(), LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], use_dora=method == "dora")
    )
    randomize_adapters(peft, seed=3)
    peft.save_pretrained(tmp_path / "peft")
    ours = load_peft(tiny_llama(), tmp_path / "peft")
    assert get_adapter_config(ours).method == method
    assert (get_adapter_config(ours).r, get_adapter_config(ours).alpha) == (4, 12.0)
    ids = torch.randint(3, 64, (2, 6))
    torch.testing.assert_close(ours(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-10, atol=1e-10)


def test_peft_import_refuses_what_it_cannot_reproduce(tmp_path):
    config = LoraConfig(r=4, target_modules=["q_proj"], rank_pattern={"q_proj": 2})
    get_peft_model(tiny_llama(), config).save_pretrained(tmp_path / "peft")
    with pytest.raises(ValueError, match=r"PEFT options this library does not import: \{'rank_pattern'"):
        load_peft(tiny_llama(), tmp_path / "peft")
    with pytest.raises(FileNotFoundError, match=r"is not a PEFT adapter folder: it has no adapter_config\.json"):
        load_peft(tiny_llama(), tmp_path)


def _expected_adapter_params(method, layers, r=8):
    """The spec's per-layer formulas (mtl-lora-spec.md §1.7), summed over (d_in, d_out) of the adapted layers."""
    total = 0
    for d_in, d_out in layers:
        total += {
            "lora": r * (d_in + d_out),
            "dora": r * (d_in + d_out) + d_out,
            "multilora": 3 * r * (d_in + d_out) + 3 * d_out,
            "moelora": r * (d_in + d_out) + (T + 1) * 8 + 8 * 4,
            "mtl_lora": r * d_in + N_UP * r * d_out + T * r * r + T * N_UP,
        }[method]
    return total


@pytest.mark.parametrize("method", ["lora", "dora", "multilora", "moelora", "mtl_lora"])
def test_parameter_counts_follow_the_spec_formulas(method):
    base = tiny_llama()
    base_total = sum(p.numel() for p in base.parameters())
    # q, o: 32 -> 32; k, v: 32 -> 16 (GQA), in each of 2 layers
    layers = [(32, 32), (32, 16), (32, 16), (32, 32)] * 2
    model = apply_adapters(base, make_config(method))
    expected = _expected_adapter_params(method, layers)
    assert count_parameters(model) == (expected, base_total + expected)


@pytest.mark.parametrize(
    ("method", "r", "targets", "options", "expected"),
    [
        ("lora", 8, "qkvo", {}, 8_388_608),
        ("lora", 16, "qkvo", {}, 16_777_216),
        ("lora", 32, "qkvo", {}, 33_554_432),
        ("mtl_lora", 8, "qkvo", {"num_tasks": 8, "num_up": 3}, 16_845_824),
        ("mtl_lora", 8, "qkvo", {"num_tasks": 8, "num_up": 3, "lambda_type": "diagonal"}, 16_788_480),
        ("multilora", 8, "qkvo", {"num_modules": 3}, 26_738_688),
        ("moelora", 8, "qkvo", {"num_tasks": 8, "num_experts": 8, "task_embedding_dim": 64}, 8_527_872),
        ("lora", 32, "qkvud", {}, 56_098_816),
        ("dora", 32, "qkvud", {}, 56_975_360),
        ("dora", 16, "qkvud", {}, 28_925_952),
    ],
)
def test_parameter_counts_of_llama2_7b_match_the_spec_table(method, r, targets, options, expected):
    """mtl-lora-spec §1.7's worked LLaMA2-7B numbers, on the real architecture built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    names = {
        "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "qkvud": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    }
    apply_adapters(model, AdapterConfig(method=method, r=r, alpha=2 * r, target_modules=names[targets], **options))
    assert count_parameters(model) == (expected, 6_738_415_616 + expected)
