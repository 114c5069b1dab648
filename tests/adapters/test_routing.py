"""Task ids reach every layer: mixed batches, gradient checkpointing, generate() with beams, nesting, threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, TaskIdError, apply_adapters, load_adapter, save_adapter, use_tasks

from ..conftest import ALL_METHODS, TASK_AWARE, adapted, make_config, tiny_llama


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mixed_batch_equals_each_sample_alone(method, mode):
    model = adapted(method).train(mode == "train")
    ids = torch.randint(3, 64, (4, 6))
    tasks = torch.tensor([2, 0, 1, 2])
    batch = model(input_ids=ids, task_ids=tasks).logits
    for b in range(4):
        alone = model(input_ids=ids[b : b + 1], task_ids=tasks[b : b + 1]).logits
        torch.testing.assert_close(batch[b : b + 1], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", TASK_AWARE)
def test_task_ids_change_the_output(method):
    model = adapted(method)
    ids = torch.randint(3, 64, (1, 6))
    a = model(input_ids=ids, task_ids=torch.tensor([0])).logits
    b = model(input_ids=ids, task_ids=torch.tensor([1])).logits
    assert (a - b).abs().max() > 1e-3


def _grads(model, ids, tasks):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids, task_ids=tasks)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", TASK_AWARE)
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(method, use_reentrant):
    model = adapted(method, dropout=0.1).train()
    ids = torch.randint(3, 64, (3, 7))
    tasks = torch.tensor([1, 2, 0])
    torch.manual_seed(5)
    plain = _grads(model, ids, tasks)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    torch.manual_seed(5)  # checkpointing restores the RNG state, so the recomputed dropout masks match
    checkpointed = _grads(model, ids, tasks)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    # A second forward with other task ids before backward: each recomputation keeps its own ids.
    model.zero_grad()
    torch.manual_seed(9)
    loss_a = model(input_ids=ids, labels=ids, task_ids=tasks).loss
    loss_b = model(input_ids=ids, labels=ids, task_ids=torch.tensor([0, 0, 0])).loss
    (loss_a + loss_b).backward()
    both = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.gradient_checkpointing_disable()
    model.zero_grad()
    torch.manual_seed(9)
    (
        model(input_ids=ids, labels=ids, task_ids=tasks).loss
        + model(input_ids=ids, labels=ids, task_ids=torch.tensor([0, 0, 0])).loss
    ).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(both[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_backward_in_another_thread_recomputes_with_the_forwards_ids(use_reentrant):
    # Autograd may run the recomputation in another thread (its device threads on GPU), where no ids are current.
    model = adapted("mtl_lora").train()
    ids = torch.randint(3, 64, (3, 7))
    tasks = torch.tensor([1, 2, 0])
    plain = _grads(model, ids, tasks)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids, task_ids=tasks).loss
    with ThreadPoolExecutor(1) as pool:
        pool.submit(loss.backward).result()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, plain[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("method", TASK_AWARE)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_follows_each_samples_task(method, num_beams):
    model = adapted(method, seed=3)
    prompts = torch.randint(3, 64, (3, 5))
    tasks = torch.tensor([2, 0, 1])
    kwargs = {
        "max_new_tokens": 6,
        "min_new_tokens": 6,
        "num_beams": num_beams,
        "do_sample": False,
        "pad_token_id": 0,
        "num_return_sequences": num_beams,
    }
    with use_tasks(model, tasks):
        together = model.generate(prompts, **kwargs)
    assert together.shape[0] == 3 * num_beams
    for b in range(3):
        with use_tasks(model, tasks[b : b + 1]):
            alone = model.generate(prompts[b : b + 1], **kwargs)
        torch.testing.assert_close(together[b * num_beams : (b + 1) * num_beams], alone, rtol=0, atol=0)
    with use_tasks(model, 1):  # an int puts every sample on that task
        same_task = model.generate(prompts, **kwargs)
    with use_tasks(model, torch.tensor([1, 1, 1])):
        torch.testing.assert_close(same_task, model.generate(prompts, **kwargs), rtol=0, atol=0)


def test_forward_keyword_overrides_use_tasks_and_nesting_restores():
    model = adapted("mtl_lora")
    ids = torch.randint(3, 64, (2, 4))
    ref0 = model(input_ids=ids, task_ids=torch.tensor([0, 0])).logits
    ref2 = model(input_ids=ids, task_ids=torch.tensor([2, 2])).logits
    with use_tasks(model, 0):
        torch.testing.assert_close(model(input_ids=ids, task_ids=torch.tensor([2, 2])).logits, ref2)
        with use_tasks(model, 2):
            torch.testing.assert_close(model(input_ids=ids).logits, ref2)
        torch.testing.assert_close(model(input_ids=ids).logits, ref0)


class TaskHeads(nn.Module):
    """A model whose own forward takes task_ids (e.g. one head per task): the router must leave them in."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 6)
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(2))

    def forward(self, x, task_ids):
        h = self.body(x)
        return torch.stack([self.heads[t](h[i]) for i, t in enumerate(task_ids.tolist())])


def test_forward_that_takes_task_ids_still_receives_them():
    model = apply_adapters(
        TaskHeads(),
        AdapterConfig(method="mtl_lora", r=2, target_modules=["body"], num_tasks=2, trainable=["heads"]),
    )
    out = model(torch.randn(3, 6), task_ids=torch.tensor([0, 1, 1]))
    assert out.shape == (3, 1)
    assert all(p.requires_grad for p in model.heads.parameters())


@pytest.mark.parametrize("method", TASK_AWARE)
def test_concurrent_forwards_in_threads_keep_their_own_task_ids(method):
    # nn.DataParallel replicas and threaded servers run one adapted model (one router) from several threads.
    model = adapted(method)
    ids = torch.randint(3, 64, (2, 6))
    calls = [  # (task ids, passed as the keyword or through use_tasks)
        (torch.tensor([0, 1]), "keyword"),
        (torch.tensor([2, 2]), "use_tasks"),
    ]
    with torch.no_grad():
        expected = [model(input_ids=ids, task_ids=tasks).logits for tasks, _ in calls]
    rounds = 60
    barrier = threading.Barrier(len(calls), timeout=60)

    def forward(tasks: torch.Tensor, how: str) -> torch.Tensor:
        with torch.no_grad():
            if how == "keyword":
                return model(input_ids=ids, task_ids=tasks).logits
            with use_tasks(model, tasks):
                return model(input_ids=ids).logits

    def run(k: int) -> int:
        wrong = 0
        for _ in range(rounds):
            barrier.wait()  # start every round together so that the forwards overlap
            try:
                wrong += not torch.equal(forward(*calls[k]), expected[k])
            except (TaskIdError, IndexError):  # ids missing or popped by the other thread
                wrong += 1
        return wrong

    with ThreadPoolExecutor(len(calls)) as pool:
        wrong = list(pool.map(run, range(len(calls))))
    assert wrong == [0, 0], f"forwards with another thread's task ids, of {rounds} per thread: {wrong}"
    with pytest.raises(TaskIdError, match="needs task ids"):  # and no thread left ids current here
        model(input_ids=ids)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_adapters_take_the_models_mode_so_dropout_is_off_at_inference(method, tmp_path):
    ids, tasks = torch.randint(3, 64, (2, 6)), torch.tensor([0, 1])
    model = adapted(method, dropout=0.05)  # applied to an eval-mode model
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        first, second = model(input_ids=ids, task_ids=tasks).logits, model(input_ids=ids, task_ids=tasks).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    loaded = load_adapter(tiny_llama(), save_adapter(model, tmp_path / "adapter.safetensors"))
    assert not any(m.training for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, task_ids=tasks).logits, first, rtol=0, atol=0)
    training = apply_adapters(tiny_llama().train(), make_config(method, dropout=0.05))
    assert all(m.training for m in training.modules())  # and a model in training mode trains its adapters
