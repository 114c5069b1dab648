"""Task mixing: how many examples of each task an epoch holds."""

from collections import Counter

import pytest
from datasets import Dataset

from mtllora.benchmarks.base import mix_tasks


def _sets(*sizes):
    return [Dataset.from_dict({"task_ids": [t] * n, "row": list(range(n))}) for t, n in enumerate(sizes)]


def test_proportional_keeps_every_example_once():
    mixed = mix_tasks(_sets(100, 10, 1))
    assert Counter(mixed["task_ids"]) == {0: 100, 1: 10, 2: 1}
    assert sorted(r for t, r in zip(mixed["task_ids"], mixed["row"], strict=True) if t == 0) == list(range(100))


def test_temperature_and_uniform_shares():
    # T=2: shares ∝ sqrt(n) = 10 : 3.162 : 1 of 111 examples -> 78.07, 24.69, 7.81 -> 78, 25, 8 (largest remainder)
    assert Counter(mix_tasks(_sets(100, 10, 1), "temperature", 2.0)["task_ids"]) == {0: 78, 1: 25, 2: 8}
    assert Counter(mix_tasks(_sets(100, 10, 1), "uniform")["task_ids"]) == {0: 37, 1: 37, 2: 37}
    # Oversampling cycles through a task's examples: 37 draws of 10 rows = 7 rows four times, 3 rows three times.
    uniform = mix_tasks(_sets(100, 10, 1), "uniform", seed=3)
    rows_of_task1 = Counter(r for t, r in zip(uniform["task_ids"], uniform["row"], strict=True) if t == 1)
    assert Counter(rows_of_task1.values()) == {4: 7, 3: 3}


def test_bad_mixing():
    with pytest.raises(ValueError, match="unknown mixing 'random'"):
        mix_tasks(_sets(3), "random")
    with pytest.raises(ValueError, match="mixing_temperature must be > 0, got 0"):
        mix_tasks(_sets(3), "temperature", 0)
