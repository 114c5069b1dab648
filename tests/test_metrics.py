"""GLUE metrics against values computed by hand from their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtllora.metrics import GLUE_TASK_METRICS, ConstantPredictionWarning, glue_average, glue_metrics, task_score

# Binary example with TP=4, FN=1, FP=1, TN=2 (positive class 1).
REFS = [1, 1, 1, 0, 0, 1, 0, 1]
PREDS = [1, 0, 1, 0, 1, 1, 0, 1]
MCC = (4 * 2 - 1 * 1) / math.sqrt((4 + 1) * (4 + 1) * (2 + 1) * (2 + 1))  # 7/15
ACC = 6 / 8
F1 = 2 * 4 / (2 * 4 + 1 + 1)  # 0.8


def test_cola_is_matthews_correlation():
    assert glue_metrics("cola", PREDS, REFS) == pytest.approx({"matthews_correlation": MCC}, rel=1e-12)


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte"])
def test_accuracy_tasks(task):
    assert glue_metrics(task, PREDS, REFS) == {"accuracy": ACC}


def test_accuracy_counts_three_classes():
    assert glue_metrics("mnli", [0, 1, 2, 2, 1], [0, 2, 2, 2, 0]) == {"accuracy": 3 / 5}


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1_of_positive_class(task):
    assert glue_metrics(task, PREDS, REFS) == pytest.approx({"accuracy": ACC, "f1": F1}, rel=1e-12)
    # Swapping the classes changes F1 (class 1 stays positive): TP=2, FP=1, FN=1.
    swapped = glue_metrics(task, 1 - np.array(PREDS), 1 - np.array(REFS))
    assert swapped["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1), rel=1e-12)


def test_stsb_pearson_and_spearman():
    preds, refs = [1.0, 2.0, 3.0, 40.0], [1.0, 3.0, 2.0, 4.0]
    # Deviations from the means (11.5 and 2.5): cross products sum to 58, squares to 1085 and 5.
    pearson = 58 / math.sqrt(1085 * 5)
    # Both are already in rank order 1..4 vs 1,3,2,4: Spearman = 1 - 6 Σd² / (n(n²-1)) = 1 - 12/60.
    spearman = 1 - 6 * 2 / (4 * 15)
    assert glue_metrics("stsb", preds, refs) == pytest.approx({"pearson": pearson, "spearmanr": spearman}, rel=1e-12)


def test_values_are_plain_floats():
    for task in GLUE_TASK_METRICS:
        for value in glue_metrics(task, PREDS, REFS).values():
            assert type(value) is float


def test_accepts_numpy_arrays():
    assert glue_metrics("rte", np.array(PREDS), np.array(REFS)) == {"accuracy": ACC}


def test_unknown_task_names_it_and_known_tasks():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'wnli'.*cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte"):
        glue_metrics("wnli", PREDS, REFS)


def test_length_mismatch_and_empty_and_2d():
    with pytest.raises(ValueError, match="rte: 3 predictions but 2 references"):
        glue_metrics("rte", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="rte: no predictions"):
        glue_metrics("rte", [], [])
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        glue_metrics("rte", [[0.1, 0.9], [0.8, 0.2]], [1, 0])


def test_task_score_is_mean_times_100():
    assert task_score({"matthews_correlation": 0.412}) == pytest.approx(41.2, rel=1e-12)
    assert task_score({"accuracy": ACC, "f1": F1}) == pytest.approx(77.5, rel=1e-12)
    assert task_score({"pearson": 0.85, "spearmanr": 0.84}) == pytest.approx(84.5, rel=1e-12)
    with pytest.raises(ValueError, match="empty"):
        task_score({})


def test_glue_average_counts_mnli_once():
    task_metrics = {
        "cola": {"matthews_correlation": 0.5},
        "mrpc": {"accuracy": 0.8, "f1": 0.9},
        "mnli_m": {"accuracy": 0.8},
        "mnli_mm": {"accuracy": 0.9},
    }
    # CoLA 50, MRPC 85, MNLI (80 + 90) / 2 = 85 -> 220 / 3; counting m and mm separately would give 76.25.
    assert glue_average(task_metrics) == pytest.approx(220 / 3, rel=1e-12)


def test_glue_average_with_one_mnli_part_or_none():
    assert glue_average({"rte": {"accuracy": 0.6}, "mnli_m": {"accuracy": 0.8}}) == pytest.approx(70.0, rel=1e-12)
    commonsense = {"boolq": {"accuracy": 0.7}, "piqa": {"accuracy": 0.8}, "ARC-Easy": {"accuracy": 0.9}}
    assert glue_average(commonsense) == pytest.approx(80.0, rel=1e-12)


def test_glue_average_errors():
    with pytest.raises(ValueError, match="empty"):
        glue_average({})
    with pytest.raises(ValueError, match="counted twice"):
        glue_average({"mnli": {"accuracy": 0.8}, "mnli_m": {"accuracy": 0.8}})


def test_constant_stsb_prediction_scores_zero_with_a_warning_instead_of_nan():
    with pytest.warns(ConstantPredictionWarning, match="stsb: pearson is undefined"):
        metrics = glue_metrics("stsb", [2.5, 2.5, 2.5], [0.0, 2.0, 4.5])
    assert metrics == {"pearson": 0.0, "spearmanr": 0.0}
    assert glue_average({"stsb": metrics, "rte": {"accuracy": 0.5}}) == 25.0
