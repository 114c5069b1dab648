"""`mtllora.analyze`: the separation numbers and the learned MTL-LoRA quantities on constructed inputs, and the
command line on tiny trained GLUE runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtllora.adapters import adapter_layers, apply_adapters
from mtllora.analyze import (
    ANALYSIS_FILE,
    lambda_cosine_similarity,
    layer_downs,
    learned_mixing,
    main,
    masked_mean,
    probe_accuracy,
    rank_space,
    variance_ratio,
)
from mtllora.train import run

from .conftest import make_config, randomize_adapters, tiny_bert
from .test_train import compose_cfg, overrides

BERT_TARGETS = ["query", "value"]


def clusters(num_tasks: int, per_task: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (features [T·n, 8], labels): task t's examples around 10·e_t with noise of std `spread`."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_tasks), per_task)
    centers = 10.0 * np.eye(8)[labels]
    return centers + spread * rng.standard_normal(centers.shape), labels


def test_separable_tasks_give_probe_accuracy_1_and_a_large_variance_ratio():
    features, labels = clusters(num_tasks=4, per_task=20, spread=0.1)
    assert probe_accuracy(features, labels, folds=5, seed=0) == 1.0
    # Per example: between ‖10·e_t - mean‖² = 7.5² + 3·2.5² = 75, within 8 dims · 0.1² = 0.08.
    assert variance_ratio(features, labels) == pytest.approx(75 / 0.08, rel=0.1)
    # The same points with labels that carry nothing about them: the probe falls towards chance (1/4).
    shuffled = np.random.default_rng(1).permutation(labels)
    assert probe_accuracy(features, shuffled, folds=5, seed=0) < 0.5
    assert variance_ratio(features, shuffled) < 0.2


def test_variance_ratio_is_between_over_within_scatter():
    # Task means 1 and 11 around the overall mean 6: between 2·25 + 2·25 = 100; within 4 · 1² = 4.
    features = np.array([[0.0], [2.0], [10.0], [12.0]])
    assert variance_ratio(features, np.array([0, 0, 1, 1])) == pytest.approx(25.0)


def test_bad_inputs_name_the_problem():
    features, labels = clusters(num_tasks=2, per_task=3, spread=0.1)
    with pytest.raises(ValueError, match="label 0 has 3 examples, fewer than folds=5"):
        probe_accuracy(features, labels, folds=5)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        variance_ratio(features, np.zeros(len(features)))
    with pytest.raises(ValueError, match="within-task scatter is 0"):
        variance_ratio(np.array([[1.0], [1.0], [2.0], [2.0]]), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="Λ of task 1 is all zeros"):
        lambda_cosine_similarity(torch.stack([torch.eye(3), torch.zeros(3, 3)]))


def test_lambda_cosine_similarity():
    eye = torch.eye(4)
    assert lambda_cosine_similarity(eye.expand(3, 4, 4)) == pytest.approx(np.ones((3, 3)))
    # Scale does not matter; a sign flip gives -1; Λs on disjoint entries are orthogonal.
    e11, e22 = torch.zeros(4, 4), torch.zeros(4, 4)
    e11[0, 0], e22[1, 1] = 1.0, 1.0
    expected = np.array([[1, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 1]], dtype=float)
    assert lambda_cosine_similarity(torch.stack([e11, 3 * e11, -e11, e22])) == pytest.approx(expected)
    # A diagonal Λ [T, r] gives what its full form does.
    diagonal = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert lambda_cosine_similarity(diagonal) == pytest.approx(lambda_cosine_similarity(torch.diag_embed(diagonal)))


def test_mixing_weights_are_softmax_of_the_logits_over_tau():
    model = apply_adapters(tiny_bert(), make_config("mtl_lora", target_modules=BERT_TARGETS, temperature=0.5))
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.3, -0.2, 0.1], [1.0, 1.0, 1.0]], dtype=torch.float64)
    for _, layer in adapter_layers(model):
        layer.lora_B_weight.data.copy_(logits)
    learned = learned_mixing(model)
    assert sorted(learned) == sorted(name for name, _ in adapter_layers(model)) and len(learned) == 4
    expected = np.exp(logits.numpy() / 0.5) / np.exp(logits.numpy() / 0.5).sum(axis=1, keepdims=True)
    for values in learned.values():
        np.testing.assert_allclose(values["mixing_weights"], expected, rtol=1e-6)
        # Λ_t starts as the identity for every task: all similarities 1.
        np.testing.assert_allclose(values["lambda_cosine"], np.ones((3, 3)), rtol=1e-12)
    lora = apply_adapters(tiny_bert(), make_config("lora", target_modules=BERT_TARGETS))
    assert learned_mixing(lora) == {}


@pytest.mark.parametrize("method", ["lora", "mtl_lora"])
def test_rank_space_is_the_pooled_low_rank_activation_of_each_samples_task(method):
    model = apply_adapters(tiny_bert(), make_config(method, target_modules=BERT_TARGETS))
    randomize_adapters(model)
    _, layer = next(adapter_layers(model))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, layer.in_features, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    task_ids = torch.tensor([2, 0, 2])
    # Per token A x, then Λ_t (MTL-LoRA: lora_factors' down is Λ_t A), then the mean over real tokens.
    z = x @ layer.lora_A.t()
    if method == "mtl_lora":
        z = torch.einsum("bsr,bqr->bsq", z, layer.lambdas()[task_ids])
    expected = torch.stack([z[i, : int(mask[i].sum())].mean(dim=0) for i in range(3)]).float()
    got = rank_space(masked_mean(x, mask), layer_downs(layer, 3).float(), task_ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_runs(tiny_encoder_dir, tiny_glue_dir, tmp_path_factory):
    """Two tiny trained GLUE runs (LoRA and MTL-LoRA, 6 steps each, 5 tasks with 24 dev rows each)."""
    root = tmp_path_factory.mktemp("analyze-runs")
    runs = {}
    for method in ("lora", "mtl_lora"):
        runs[method] = root / method
        run(compose_cfg(overrides(tiny_encoder_dir, tiny_glue_dir, root, f"method={method}"), runs[method]))
    return runs


@pytest.fixture(scope="module")
def paths(tiny_encoder_dir, tiny_glue_dir) -> list[str]:
    """The overrides for the model and data paths outside the repository, which run configs do not record."""
    return [f"model.name_or_path={tiny_encoder_dir}", f"benchmark.data_dir={tiny_glue_dir}"]


def test_cli_writes_the_figures_and_the_numbers(tiny_runs, paths, tmp_path):
    out = tmp_path / "analysis"
    runs = [str(tiny_runs["lora"]), str(tiny_runs["mtl_lora"])]
    main([runs[0], paths[0], runs[1], "--out", str(out), "--examples-per-task", "10", paths[1]])
    document = json.loads((out / ANALYSIS_FILE).read_text())
    assert document["settings"]["examples_per_task"] == 10
    # Keyed by directory name, not by a path of this machine (the JSON is committed).
    assert set(document["runs"]) == {tiny_runs["lora"].name, tiny_runs["mtl_lora"].name}
    tasks = ["cola", "sst2", "mrpc", "stsb", "rte"]
    for method, path in tiny_runs.items():
        numbers = document["runs"][path.name]
        assert numbers["method"] == method and numbers["tasks"] == tasks
        assert numbers["examples"] == dict.fromkeys(tasks, 10) and numbers["chance_accuracy"] == 0.2
        # The tiny encoder (2 layers) adapted at query, key, value and attention.output.dense.
        assert len(numbers["layers"]) == 8
        # The first adapted layer's input is the embeddings' output, which no adapter changed.
        first = next(iter(numbers["layers"].values()))
        assert first["input"] == first["base_input"]
        for entry in numbers["layers"].values():
            assert entry["rank_dim"] == 8 and entry["input_dim"] == 32
            for space in ("rank_space", "input", "base_input"):
                assert 0.0 <= entry[space]["probe_accuracy"] <= 1.0 and entry[space]["variance_ratio"] > 0
            assert ("mixing_weights" in entry) == (method == "mtl_lora")
            if method == "mtl_lora":
                mixing = np.array(entry["mixing_weights"])
                assert mixing.shape == (5, 3) and mixing.sum(axis=1) == pytest.approx(np.ones(5))
                assert np.array(entry["lambda_cosine"]).shape == (5, 5)
        assert ("lambda_cosine_off_diagonal" in numbers["mean_over_layers"]) == (method == "mtl_lora")
    # Both runs share the base model and the examples: the base model's inputs are the same, the trained ones not.
    lora, mtl = (document["runs"][path.name]["layers"] for path in tiny_runs.values())
    assert [entry["base_input"] for entry in lora.values()] == [entry["base_input"] for entry in mtl.values()]
    assert [entry["input"] for entry in lora.values()] != [entry["input"] for entry in mtl.values()]
    assert document["figures"] == {"separation": "separation.png", "pca": "pca.png"}
    assert "figures" not in document["runs"][tiny_runs["lora"].name]
    mtl_figures = document["runs"][tiny_runs["mtl_lora"].name]["figures"]
    assert mtl_figures == {
        "mixing_weights": "mixing-weights-mtl-lora.png",
        "lambda_cosine": "lambda-cosine-mtl-lora.png",
    }
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [ANALYSIS_FILE, *document["figures"].values(), *mtl_figures.values()]
    )
    for figure in [*document["figures"].values(), *mtl_figures.values()]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_cli_refuses_bad_input_clearly(tiny_runs, paths, tmp_path):
    lora, out = str(tiny_runs["lora"]), str(tmp_path / "out")
    with pytest.raises(SystemExit, match="--examples-per-task 3 is below --folds 5"):
        main([lora, "--out", out, "--examples-per-task", "3", *paths])
    with pytest.raises(SystemExit, match="no trained adapter"):
        main([str(tmp_path), "--out", out])
    with pytest.raises(SystemExit, match=r"model\.name_or_path=/path/to/"):
        main([lora, "--out", out])
    with pytest.raises(SystemExit, match=r"--pca-layer 8 is out of range: .+ has 8 adapter layers"):
        main([lora, "--out", out, "--pca-layer", "8", *paths])
    with pytest.raises(SystemExit, match=r"the local GLUE copy data_dir=.*missing.* lacks"):
        main([lora, "--out", out, paths[0], f"benchmark.data_dir={tmp_path / 'missing'}"])
