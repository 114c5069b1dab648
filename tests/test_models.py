"""Multi-task heads: per-sample routing, losses, pooling, and gradients for every head."""

import pytest
import torch
from torch.nn import functional as F

from mtllora.adapters import TaskIdError
from mtllora.benchmarks.glue import GlueBenchmark, MultiTaskClassifier
from mtllora.models import ModelConfig

from .conftest import tiny_bert


def _model(**kwargs):
    return MultiTaskClassifier(tiny_bert(), num_labels=[2, 1, 3], **kwargs).double()


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(3, 64, (5, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "task_ids": torch.tensor([0, 1, 2, 1, 0]),
        "labels": torch.tensor([1.0, 3.5, 2.0, 0.5, 0.0], dtype=torch.float64),
    }


def test_each_sample_uses_its_own_head_and_loss():
    model = _model(pooling="mean", head="linear").eval()
    batch = _batch()
    out = model(**batch)
    hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).double()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    losses = []
    for i, task in enumerate(batch["task_ids"].tolist()):
        logits = model.heads[task](pooled[i : i + 1])[0]
        n = model.num_labels[task]
        torch.testing.assert_close(out.logits[i, :n], logits)
        assert torch.all(out.logits[i, n:] == 0)
        label = batch["labels"][i]
        losses.append(F.mse_loss(logits[0], label) if n == 1 else F.cross_entropy(logits[None], label.long()[None]))
    torch.testing.assert_close(out.loss, torch.stack(losses).mean().float())


def test_task_mean_balance_and_weights():
    batch = _batch()
    per_sample = []
    plain = _model(task_weights=[1.0, 1.0, 1.0]).eval()
    out = plain(**{k: v for k, v in batch.items() if k != "labels"})
    for i, task in enumerate(batch["task_ids"].tolist()):
        n = plain.num_labels[task]
        logits, label = out.logits[i, :n], batch["labels"][i]
        per_sample.append(F.mse_loss(logits[0], label) if n == 1 else F.cross_entropy(logits[None], label.long()[None]))
    weights = [2.0, 0.5, 1.0]
    balanced = _model(loss_balance="task_mean", task_weights=weights).eval()
    balanced.load_state_dict(plain.state_dict())
    tasks = batch["task_ids"].tolist()
    expected = torch.stack(
        [torch.stack([per_sample[i] for i in range(5) if tasks[i] == t]).mean() * weights[t] for t in (0, 1, 2)]
    ).mean()
    torch.testing.assert_close(balanced(**batch).loss, expected.float())


def test_absent_tasks_get_zero_not_missing_gradients():
    model = _model().train()
    batch = _batch()
    batch["task_ids"] = torch.tensor([0, 0, 0, 0, 0])
    batch["labels"] = torch.tensor([1.0, 0, 1, 0, 1], dtype=torch.float64)
    model(**batch).loss.backward()
    for task in (1, 2):
        grads = [p.grad for p in model.heads[task].parameters()]
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert all(torch.count_nonzero(p.grad) > 0 for p in model.heads[0].parameters())


def test_task_id_out_of_range_names_the_id():
    batch = _batch()
    batch["task_ids"] = torch.tensor([0, 1, 3, 1, 0])
    with pytest.raises(TaskIdError, match=r"task id 3 is out of range: this model has 3 task heads \(valid ids 0..2\)"):
        _model()(**batch)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        GlueBenchmark(tasks=["rte"], pooling="max")
    with pytest.raises(ValueError, match="unknown dtype 'float33' for model 'm'"):
        ModelConfig(name="m", name_or_path="x", dtype="float33")
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['layers'\]"):
        ModelConfig.from_mapping({"name": "m", "name_or_path": "x", "layers": 2})
    with pytest.raises(ValueError, match="unknown loss_balance 'sum'"):
        _model(loss_balance="sum")
