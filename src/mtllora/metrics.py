"""GLUE metrics and the scores that summarise them, computed with scikit-learn and scipy.

`glue_metrics` gives the same values as Hugging Face's `evaluate.load("glue", task)` (which cannot be loaded
offline): fractions in 0..1, correlations in -1..1. `task_score` and `glue_average` turn them into the numbers
the paper's tables report (×100).

The image-text metrics (VQAv2 accuracy, GQA/NLVR2 exact match, COCO CIDEr-D and BLEU-4, their average) follow at
the end of the module.
"""

from __future__ import annotations

import re
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


class RunWarning(UserWarning):
    """Something a finished run's numbers depend on that its config does not say (a fallback taken, data
    missing): recorded in `metrics.json`'s "warnings" and printed beside the run in the tables."""


class ConstantPredictionWarning(RunWarning):
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
    return glue_score_average({key: task_score(metrics) for key, metrics in task_metrics.items()})


def glue_score_average(task_scores: Mapping[str, float]) -> float:
    """Returns the GLUE average (×100) of task scores (×100, `task_score`): their unweighted mean, with `mnli_m` and
    `mnli_mm` first averaged into one MNLI score (`glue_average`; the tables use it on stored scores)."""
    if not task_scores:
        raise ValueError("glue_score_average needs at least one task score, got an empty mapping")
    scores = {key: score for key, score in task_scores.items() if key not in _MNLI_PARTS}
    mnli = [task_scores[key] for key in _MNLI_PARTS if key in task_scores]
    if mnli:
        if "mnli" in scores:
            raise ValueError("task scores have both 'mnli' and 'mnli_m'/'mnli_mm'; MNLI would be counted twice")
        scores["mnli"] = float(np.mean(mnli))
    return float(np.mean(list(scores.values())))


# ---------------------------------------------------------------------------------------------------------------
# Image-text metrics (VQAv2, GQA, NLVR2, COCO Caption), as the VL-T5 / VL-Adapter / MTL-LoRA multitask code reports
# them: fractions in 0..1 (CIDEr-D unbounded, about 1.15 for a good model); `image_text_average` gives the ×100
# number of the DoRA and VL-Adapter tables.

# The official VQA evaluator's normalisation tables (GT-Vision-Lab/VQA vqaEval.py), entries as published: the
# "somebody'd" -> "somebodyd" entry really maps that way round, and keys starting with a capital never match
# because words are lower-cased first. First the words whose apostrophe-less spelling it restores ("dont" -> "don't").
# fmt: off
_VQA_APOSTROPHE_WORDS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "didn't", "doesn't", "don't", "hadn't", "hasn't", "haven't",
    "he'd", "he's", "how'd", "how'll", "how's", "isn't", "it'd", "it'll", "ma'am", "mightn't", "might've",
    "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "shan't", "should've", "shouldn't",
    "somebody'll", "somebody's", "someone'd", "someone'll", "someone's", "something'd", "something'll", "that's",
    "there'd", "there're", "there's", "they'd", "they'll", "they're", "they've", "wasn't", "we've", "weren't",
    "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'll",
    "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "y'all", "you'd", "you'll",
    "you're", "you've",
)
# fmt: on
_VQA_CONTRACTIONS = {
    **{word.replace("'", ""): word for word in _VQA_APOSTROPHE_WORDS},
    # Multi-apostrophe forms: each of the spellings on the left maps to the one on the right.
    **{
        spelling: word
        for word, spellings in {
            "couldn't've": ("couldn'tve", "couldnt've"),
            "hadn't've": ("hadnt've", "hadn'tve"),
            "he'd've": ("hed've", "he'dve"),
            "I'd've": ("Id've", "I'dve"),
            "it'd've": ("itd've", "it'dve"),
            "mightn't've": ("mightnt've", "mightn'tve"),
            "'ow's'at": ("ow's'at", "'ows'at", "'ow'sat"),
            "she'd've": ("shed've", "she'dve"),
            "shouldn't've": ("shouldnt've", "shouldn'tve"),
            "somebody'd've": ("somebodyd've", "somebody'dve"),
            "someone'd've": ("someoned've", "someone'dve"),
            "something'd've": ("somethingd've", "something'dve"),
            "there'd've": ("thered've", "there'dve"),
            "they'd've": ("theyd've", "they'dve"),
            "we'd've": ("wed've", "we'dve"),
            "who'd've": ("whod've", "who'dve"),
            "wouldn't've": ("wouldnt've", "wouldn'tve"),
            "y'all'll": ("yall'll", "y'allll"),
            "y'all'd've": ("yall'd've", "y'alld've", "y'all'dve"),
            "you'd've": ("youd've", "you'dve"),
        }.items()
        for spelling in spellings
    },
    "Im": "I'm",
    "Ive": "I've",
    "let's": "let's",
    "she's": "she's",
    "somebody'd": "somebodyd",
    "twas": "'twas",
}
_VQA_NUMBERS = {
    word: str(i)
    for i, word in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}
_VQA_NUMBERS["none"] = "0"
_VQA_ARTICLES = frozenset({"a", "an", "the"})
_VQA_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# `(?!<=\d)` is the official pattern's (a lookahead that never fails where a period stands, not a lookbehind), so
# every period not followed by a digit goes; the official call passes re.UNICODE (32) as the count argument.
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_VQA_PERIOD_COUNT = int(re.UNICODE)
VQA_EVALUATORS = ("official", "vl-t5")


def _vqa_punctuation(text: str) -> str:
    """The official processPunctuation: a punctuation mark next to a space, or any mark in a text with a digit
    comma ("1,000"), is deleted, otherwise replaced by a space; then periods not before a digit are deleted."""
    out = text
    delete_all = _VQA_DIGIT_COMMA.search(text) is not None
    for mark in _VQA_PUNCTUATION:
        out = out.replace(mark, "" if delete_all or f"{mark} " in text or f" {mark}" in text else " ")
    return _VQA_PERIOD.sub("", out, count=_VQA_PERIOD_COUNT)


def _vqa_digits_articles(text: str) -> str:
    """The official processDigitArticle: lower-case, number words to digits, articles dropped, contractions
    given their apostrophes, words joined by single spaces."""
    words = [_VQA_NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def vqa_normalize_answer(answer: str) -> str:
    """Returns an answer normalised as the official VQA evaluator does (newlines/tabs to spaces, stripped,
    punctuation, then digits, articles and contractions): "Two dogs." -> "2 dogs", "a dog" -> "dog"."""
    return _vqa_digits_articles(_vqa_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def vqa_question_accuracy(prediction: str, annotator_answers: Sequence[str], evaluator: str = "official") -> float:
    """Returns one question's VQA accuracy: min(#other annotators who gave the prediction / 3, 1), averaged over
    the 10 leave-one-annotator-out subsets, after the evaluator's normalisation.

    "official" is GT-Vision-Lab/VQA vqaEval.py (the evaluation server's): answers are stripped of newlines, tabs and
    outer spaces, and both prediction and annotator answers are normalised only when the annotators disagree (so
    against ten "2"s the prediction "two" scores 0). "vl-t5" is VL-T5's `evaluate_raw`, the VQA test number of the
    VL-Adapter/DoRA/MTL-LoRA multitask runs: the prediction is always normalised, annotator answers are only
    punctuation-processed, and only when they disagree.
    """
    if evaluator not in VQA_EVALUATORS:
        raise ValueError(f"unknown VQA evaluator {evaluator!r}; expected one of {VQA_EVALUATORS}")
    if not annotator_answers:
        raise ValueError("a VQA question needs its annotator answers (10 in VQAv2), got none")
    if evaluator == "official":
        gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in annotator_answers]
        pred = prediction.replace("\n", " ").replace("\t", " ").strip()
        if len(set(gts)) > 1:
            gts = [_vqa_digits_articles(_vqa_punctuation(a)) for a in gts]
            pred = _vqa_digits_articles(_vqa_punctuation(pred))
    else:
        pred = vqa_normalize_answer(prediction)
        gts = [_vqa_punctuation(a) for a in annotator_answers] if len(set(annotator_answers)) > 1 else annotator_answers
    matches = sum(gt == pred for gt in gts)
    # Leaving out an annotator who gave the prediction leaves matches - 1 others that did; anyone else, matches.
    return sum(min(1.0, (matches - (gt == pred)) / 3) for gt in gts) / len(gts)


def vqa_accuracy(
    predictions: Sequence[str], annotator_answers: Sequence[Sequence[str]], evaluator: str = "official"
) -> float:
    """Returns the VQA accuracy (0..1) of the predictions against each question's annotator answers, the mean of
    `vqa_question_accuracy`; the image-text benchmark reports it with evaluator="vl-t5", the code behind the
    paper's VQA numbers, whenever the 10 answers are known, and `vqa_score_accuracy` otherwise."""
    _check_pairs("VQA", predictions, annotator_answers)
    return float(
        np.mean([vqa_question_accuracy(p, a, evaluator) for p, a in zip(predictions, annotator_answers, strict=True)])
    )


def vqa_score_accuracy(predictions: Sequence[str], labels: Sequence[Mapping[str, float]]) -> float:
    """Returns VL-T5's score-dict ("topk") VQA accuracy: the mean of label[prediction] (0 when absent) over the
    preprocessed `label` {answer: score} dicts (scores 0.3/0.6/0.9/1 for 1/2/3/4+ annotators); the prediction is
    looked up as generated, without normalisation, as VL-T5's `evaluate` does."""
    _check_pairs("VQA", predictions, labels)
    return float(np.mean([label.get(p, 0.0) for p, label in zip(predictions, labels, strict=True)]))


def exact_match_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Returns the fraction of predictions equal to their reference string: GQA accuracy (VL-T5 looks the answer up
    in a one-answer label dict, which is this) and NLVR2 accuracy over "true"/"false"."""
    _check_pairs("exact-match", predictions, references)
    return float(np.mean([p == r for p, r in zip(predictions, references, strict=True)]))


def _check_pairs(what: str, predictions: Sequence, references: Sequence) -> None:
    """Raises unless there are as many predictions as references, and some."""
    if len(predictions) != len(references):
        raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{what}: no predictions to score")


# The tokens coco-caption's PTBTokenizer removes after tokenising (pycocoevalcap/tokenizer/ptbtokenizer.py); the
# brackets and quotes are what PTB turns -LRB-, `` and the like into.
_PTB_PUNCTUATION = frozenset(
    ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";")
) | frozenset('"()[]{}')
_PTB_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:[-.][^\W_]+)*|\.\.\.|--|\S")


def coco_tokenize(text: str) -> str:
    """Returns a caption tokenised as coco-caption's Java PTBTokenizer leaves it for BLEU and CIDEr: lower-cased,
    clitics split ("dog's" -> "dog 's", "don't" -> "do n't"), punctuation tokens removed, tokens joined by spaces.

    Pure Python (no Java); for captions of words, digits and ordinary punctuation it gives the PTB tokens,
    hyphenated words and decimals kept whole. Rare symbols ($, %, &) are kept as tokens, as PTB keeps them.
    """
    tokens = _PTB_TOKEN.findall(text.lower().replace("n't", " n't"))
    return " ".join(token for token in tokens if token not in _PTB_PUNCTUATION)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Returns {"CIDEr": CIDEr-D, "BLEU-4": corpus BLEU-4} of one caption per image against its references, as the
    COCO caption evaluation computes them (pycocoevalcap's scorers after `coco_tokenize`).

    CIDEr-D (sigma 6, clipped n-gram counts, ×10, n = 1..4) takes its IDF from the references of exactly the
    images scored here, so a score depends on the evaluated set; BLEU-4 is corpus-level with the brevity penalty
    of the closest reference length. VL-Adapter/DoRA tables show CIDEr ×100.
    """
    _check_pairs("caption", predictions, references)
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(
            f"caption: {len(empty)} images have no reference captions (first indices: {empty[:5]}); "
            "CIDEr and BLEU need at least one per image"
        )
    # Imported here: the caption benchmark's package only, which the trainer must not need to import.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [coco_tokenize(p)] for i, p in enumerate(predictions)}
    gts = {i: [coco_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr": float(cider), "BLEU-4": float(bleu[3])}


def image_text_average(vqa: float, gqa: float, nlvr: float, cider: float) -> float:
    """Returns the image-text average of the VL-Adapter/DoRA tables (×100): the mean of VQAv2, GQA and NLVR2
    accuracy and COCO CIDEr, each given as a fraction here (CIDEr as coco-caption returns it, e.g. 1.153)."""
    return float(np.mean([vqa, gqa, nlvr, cider]) * 100)
