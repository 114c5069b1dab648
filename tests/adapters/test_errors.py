"""Bad input fails with a clear message naming the bad value and what was expected."""

import re

import pytest
import torch

from mtllora.adapters import (
    AdapterConfig,
    AdapterFileError,
    TaskIdError,
    apply_adapters,
    get_task_names,
    load_adapter,
    read_adapter_config,
    read_adapter_tasks,
    save_adapter,
    use_tasks,
)

from ..conftest import adapted, make_config, tiny_llama


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown adapter method 'mtllora'.*\['dora', 'lora', 'moelora', 'mtl_lora'"):
        AdapterConfig(method="mtllora")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "lora", "r": 0}, "r must be a positive integer, got 0"),
        ({"method": "lora", "r": -4}, "r must be a positive integer, got -4"),
        ({"method": "lora", "alpha": 0}, "alpha must be a positive number, got 0"),
        ({"method": "lora", "dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"method": "mtl_lora", "num_tasks": 2, "num_up": 0}, "num_up must be >= 1, got 0"),
        ({"method": "mtl_lora", "num_tasks": 2, "temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"method": "mtl_lora", "num_tasks": 2, "lambda_type": "svd"}, "unknown lambda_type 'svd'"),
        ({"method": "mtl_lora", "num_tasks": 0}, "num_tasks must be >= 1, got 0"),
        ({"method": "mtl_lora"}, r"method 'mtl_lora' needs option\(s\) \['num_tasks'\]"),
        ({"method": "lora", "num_up": 3}, r"unknown option\(s\) \['num_up'\] for method 'lora'"),
        ({"method": "multilora", "num_modules": 0}, "num_modules must be >= 1, got 0"),
        ({"method": "lora", "target_modules": []}, "target_modules is empty"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_moelora_rank_must_split_across_experts():
    with pytest.raises(ValueError, match="r divisible by num_experts, got r=6, E=4"):
        apply_adapters(tiny_llama(), make_config("moelora", r=6))


def test_target_modules_matching_nothing_lists_adaptable_names():
    with pytest.raises(ValueError, match=r"target_modules \['query'\] matched no adaptable layer") as err:
        apply_adapters(tiny_llama(), make_config("lora", target_modules=["q_proj", "query"]))
    assert "q_proj" in str(err.value) and "down_proj" in str(err.value)


@pytest.mark.parametrize("targets", [["q_proj", "embed_tokens"], r"model\.embed_tokens"])
def test_target_of_another_type_says_which_types_are_adaptable(targets):
    message = r"matched no adaptable layer \(nn.Linear or transformers' Conv1D\).*model.embed_tokens \(Embedding\)"
    with pytest.raises(ValueError, match=message):
        apply_adapters(tiny_llama(), make_config("lora", target_modules=targets))


def test_regex_target_and_trainable_pattern():
    model = apply_adapters(tiny_llama(), make_config("lora", target_modules=r".*\.(q|v)_proj", trainable=["norm"]))
    adapted_names = {n.rsplit(".", 2)[-2] for n, p in model.named_parameters() if "lora_A" in n}
    assert adapted_names == {"q_proj", "v_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "lora" not in n]
    assert trainable and all("norm" in n for n in trainable)
    with pytest.raises(ValueError, match="trainable pattern 'heads' matched no parameter"):
        apply_adapters(tiny_llama(), make_config("lora", trainable=["heads"]))


def test_apply_twice_is_refused():
    model = apply_adapters(tiny_llama(), make_config("lora"))
    with pytest.raises(ValueError, match="already has mtllora adapters"):
        apply_adapters(model, make_config("lora"))


@pytest.mark.parametrize("method", ["mtl_lora", "moelora"])
def test_missing_task_ids_names_the_layer_and_what_to_pass(method):
    model = adapted(method)
    ids = torch.randint(0, 64, (2, 5))
    with pytest.raises(TaskIdError, match=re.escape(f"model.layers.0.self_attn.q_proj ({method}) needs task ids")):
        model(input_ids=ids)
    # The router is clean again after the error: a correct call works.
    model(input_ids=ids, task_ids=torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("task_ids", "message"),
    [
        (torch.tensor([0, 3]), "task id 3 is out of range: this model has num_tasks=3"),
        (torch.tensor([-1, 0]), "task id -1 is out of range"),
        (torch.tensor([[0, 1]]), r"task_ids must have shape \[batch\], got shape \(1, 2\)"),
        (torch.tensor([0.0, 1.0]), "task_ids must be an integer tensor, got dtype torch.float32"),
        (torch.tensor([0, 1, 2]), "task_ids has 3 entries but model.layers.0.self_attn.q_proj"),
    ],
)
def test_bad_task_ids(task_ids, message):
    model = adapted("mtl_lora")
    with pytest.raises(TaskIdError, match=message):
        model(input_ids=torch.randint(0, 64, (2, 5)), task_ids=task_ids)


def test_task_ids_on_the_meta_device_say_which_device_was_expected():
    model = adapted("mtl_lora")
    meta = torch.tensor([0, 1], device="meta")
    expected = r"task_ids are on the meta device .* on the CPU or on the model's device \(cpu\)"
    with pytest.raises(TaskIdError, match=expected):
        model(input_ids=torch.randint(0, 64, (2, 5)), task_ids=meta)
    with pytest.raises(TaskIdError, match=r"on the meta device"), use_tasks(model, meta):
        pass


def test_task_names_are_saved_with_the_adapter_and_checked_on_load(tmp_path):
    model = apply_adapters(tiny_llama(), make_config("mtl_lora"), tasks=["a", "b", "c"])
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    assert read_adapter_tasks(path) == ["a", "b", "c"]
    assert get_task_names(load_adapter(tiny_llama(), path)) == ["a", "b", "c"]
    other = apply_adapters(tiny_llama(), make_config("mtl_lora"), tasks=["c", "b", "a"])
    with pytest.raises(ValueError, match=r"for tasks \['a', 'b', 'c'\], but the model's tasks are \['c', 'b', 'a'\]"):
        load_adapter(other, path)
    unnamed = save_adapter(apply_adapters(tiny_llama(), make_config("mtl_lora")), tmp_path / "unnamed.safetensors")
    assert read_adapter_tasks(unnamed) is None  # as files written before names were stored: still load
    assert get_task_names(load_adapter(tiny_llama(), unnamed)) is None
    with pytest.raises(ValueError, match=r"4 task names \['a', 'b', 'c', 'd'\] for mtl_lora with num_tasks=3"):
        apply_adapters(tiny_llama(), make_config("mtl_lora"), tasks=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"tasks must be distinct non-empty names, got \['a', 'a'\]"):
        apply_adapters(tiny_llama(), make_config("mtl_lora"), tasks=["a", "a"])


def test_a_truncated_adapter_file_is_named_as_such(tmp_path):
    path = save_adapter(adapted("lora"), tmp_path / "adapter.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = rf"{re.escape(str(path))} is truncated or corrupt, not a readable safetensors adapter file"
    with pytest.raises(AdapterFileError, match=message):
        read_adapter_config(path)
    with pytest.raises(AdapterFileError, match=message):
        load_adapter(tiny_llama(), path)
    path.write_bytes(b"")
    with pytest.raises(AdapterFileError, match=message):
        read_adapter_config(path)


def test_use_tasks_validates_and_needs_adapters():
    model = adapted("mtl_lora")
    with pytest.raises(TaskIdError, match="task id 7 is out of range"), use_tasks(model, 7):
        pass
    with pytest.raises(ValueError, match="has no mtllora adapters"), use_tasks(tiny_llama(), 0):
        pass
