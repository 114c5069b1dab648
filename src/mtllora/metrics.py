"""GLUE metrics and the scores that summarise them, computed with scikit-learn and scipy.

`glue_metrics` gives the same values as Hugging Face's `evaluate.load("glue", task)` (which cannot be loaded
offline): fractions in 0..1, correlations in -1..1. `task_score` and `glue_average` turn them into the numbers
the paper's tables report (×100).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# Each metric is called as fn(references, predictions); F1 takes class 1 as positive (sklearn's default), as
# GLUE does for MRPC (paraphrase) and QQP (duplicate).
_METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "matthews_correlation": matthews_corrcoef,
    "accuracy": accuracy_score,
    "f1": f1_score,
    "pearson": lambda refs, preds: pearsonr(preds, refs)[0],
    "spearmanr": lambda refs, preds: spearmanr(preds, refs)[0],
}

GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}

_CORRELATIONS = ("matthews_correlation", "pearson", "spearmanr")


class ConstantPredictionWarning(UserWarning):
    """A correlation metric was undefined (constant predictions or references) and is reported as 0."""


# GLUE counts MNLI once: its matched and mismatched evaluations are averaged into one task score.
_MNLI_PARTS = ("mnli_m", "mnli_mm")


def glue_metrics(task: str, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> dict[str, float]:
    """Returns the GLUE metrics of `task` (e.g. {"accuracy": 0.8, "f1": 0.86} for MRPC) as plain floats.

    `predictions` and `references` are 1-D: class ids, or similarity scores for STS-B. Keys follow HF's GLUE
    metric: matthews_correlation (CoLA); accuracy (SST-2, MNLI, QNLI, RTE, MRPC, QQP); f1 with positive class 1
    (MRPC, QQP); pearson and spearmanr (STS-B). A correlation that is undefined (constant predictions) is
    reported as 0 with a ConstantPredictionWarning.
    """
    if task not in GLUE_TASK_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {', '.join(GLUE_TASK_METRICS)}")
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.ndim != 1 or refs.ndim != 1:
        raise ValueError(
            f"{task}: predictions and references must be 1-D (class ids or scores), got shapes "
            f"{preds.shape} and {refs.shape}"
        )
    if len(preds) != len(refs):
        raise ValueError(f"{task}: {len(preds)} predictions but {len(refs)} references")
    if len(preds) == 0:
        raise ValueError(f"{task}: no predictions to score")
    results = {}
    for name in GLUE_TASK_METRICS[task]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's own ConstantInputWarning; ours below says what was done
            value = float(_METRIC_FUNCTIONS[name](refs, preds))
        if np.isnan(value) and name in _CORRELATIONS:
            # A constant prediction has no correlation; 0 ("no better than chance") keeps averages finite.
            warnings.warn(
                f"{task}: {name} is undefined because the predictions or references are constant; reported as 0",
                ConstantPredictionWarning,
                stacklevel=2,
            )
            value = 0.0
        results[name] = value
    return results


def task_score(metrics: Mapping[str, float]) -> float:
    """Returns the single score of one task: the mean of its metric values × 100.

    This is the usual GLUE convention: MRPC and QQP report the mean of accuracy and F1, STS-B the mean of
    Pearson and Spearman; a one-metric task just gets that metric × 100.
    """
    if not metrics:
        raise ValueError("task_score needs at least one metric, got an empty mapping")
    return float(np.mean(list(metrics.values())) * 100)


def glue_average(task_metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Returns the GLUE average (×100) over the evaluated tasks: the unweighted mean of their task scores.

    `task_metrics` maps task keys to `glue_metrics`-style dicts. MNLI is evaluated twice, as `mnli_m` (matched)
    and `mnli_mm` (mismatched); like the GLUE benchmark, their two task scores are first averaged into one MNLI
    score, so MNLI weighs as much as any other task. Keys other than those two are each one task, which makes this
    also the plain mean for benchmarks without MNLI (e.g. commonsense accuracies).
    """
    if not task_metrics:
        raise ValueError("glue_average needs at least one task, got an empty mapping")
    scores = {key: task_score(metrics) for key, metrics in task_metrics.items() if key not in _MNLI_PARTS}
    mnli = [task_score(task_metrics[key]) for key in _MNLI_PARTS if key in task_metrics]
    if mnli:
        if "mnli" in scores:
            raise ValueError("task_metrics has both 'mnli' and 'mnli_m'/'mnli_mm'; MNLI would be counted twice")
        scores["mnli"] = float(np.mean(mnli))
    return float(np.mean(list(scores.values())))
