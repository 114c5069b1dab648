"""Image-text metrics against hand-computed values: VQA accuracy over 10 annotator answers (both evaluators,
normalisation included), VL-T5's score-dict accuracy, exact match, the PTB-like tokenisation, and CIDEr-D / BLEU-4
against an independent implementation written here from the coco-caption definitions."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from mtllora.metrics import (
    caption_metrics,
    coco_tokenize,
    exact_match_accuracy,
    image_text_average,
    vqa_accuracy,
    vqa_normalize_answer,
    vqa_question_accuracy,
    vqa_score_accuracy,
)


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("Two.", "2"),
        ("a dog", "dog"),
        ("The Dog!", "dog"),
        ("dont", "don't"),
        ("1,000", "1000"),  # a digit comma deletes every punctuation mark
        ("hot-dog", "hot dog"),  # a mark away from spaces becomes a space
        ("3.5", "3.5"),  # a period before a digit stays
        ("none", "0"),
        ("  yes\n", "yes"),
    ],
)
def test_vqa_normalisation(answer, normalised):
    assert vqa_normalize_answer(answer) == normalised


# (prediction, the 10 annotator answers, official accuracy, VL-T5 accuracy), each computed by hand: with m of the
# 10 answers equal to the prediction, accuracy = (m * min(1, (m - 1) / 3) + (10 - m) * min(1, m / 3)) / 10.
VQA_CASES = [
    ("2", ["2"] * 3 + ["3"] * 7, 0.9, 0.9),  # m=3: (3 * 2/3 + 7 * 1) / 10
    ("two", ["2"] * 3 + ["3"] * 7, 0.9, 0.9),  # annotators disagree: the prediction is normalised to "2"
    ("red", ["red"] + ["blue"] * 9, 0.3, 0.3),  # m=1: (1 * 0 + 9 * 1/3) / 10
    ("Yes.", ["yes"] * 4 + ["no"] * 6, 1.0, 1.0),  # m=4: everyone's 9 others hold >= 3 matches
    ("no!", ["yes"] * 4 + ["no"] * 6, 1.0, 1.0),
    ("maybe", ["yes"] * 4 + ["no"] * 6, 0.0, 0.0),
    # Unanimous annotators: the official evaluator normalises nothing, so "two" misses ten "2"s; VL-T5 always
    # normalises the prediction.
    ("two", ["2"] * 10, 0.0, 1.0),
    ("2", ["2"] * 10, 1.0, 1.0),
    # "a dog" among the annotators: official normalises them (m=3 -> 0.9); VL-T5 only strips their punctuation,
    # so "a dog" stays and m=2: (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    ("dog", ["dog", "dog", "a dog"] + ["cat"] * 7, 0.9, 0.6),
    # Punctuation in annotators' answers: "dog!" -> "dog " -> "dog" (official) but stays "dog " for VL-T5, m=1.
    ("dog", ["dog!", "dog", "dog"] + ["cat"] * 7, 0.9, 0.6),
]


@pytest.mark.parametrize(("prediction", "answers", "official", "vl_t5"), VQA_CASES)
def test_vqa_question_accuracy_by_hand(prediction, answers, official, vl_t5):
    assert vqa_question_accuracy(prediction, answers) == pytest.approx(official)
    assert vqa_question_accuracy(prediction, answers, evaluator="vl-t5") == pytest.approx(vl_t5)


def test_vqa_accuracy_is_the_mean_and_checks_its_input():
    predictions = [case[0] for case in VQA_CASES]
    answers = [case[1] for case in VQA_CASES]
    assert vqa_accuracy(predictions, answers) == pytest.approx(sum(c[2] for c in VQA_CASES) / len(VQA_CASES))
    assert vqa_accuracy(predictions, answers, "vl-t5") == pytest.approx(sum(c[3] for c in VQA_CASES) / len(VQA_CASES))
    with pytest.raises(ValueError, match="VQA: 1 predictions but 2 references"):
        vqa_accuracy(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="no predictions"):
        vqa_accuracy([], [])
    with pytest.raises(ValueError, match="unknown VQA evaluator 'lxmert'"):
        vqa_question_accuracy("a", ["a"], evaluator="lxmert")
    with pytest.raises(ValueError, match="needs its annotator answers"):
        vqa_question_accuracy("a", [])


def test_vqa_score_accuracy_and_exact_match():
    labels = [{"2": 1.0, "3": 0.3}, {"dog": 0.6}, {}]
    # 0.3 + 0 (looked up as generated: "Dog" is not "dog") + 0, over 3
    assert vqa_score_accuracy(["3", "Dog", "x"], labels) == pytest.approx(0.1)
    assert exact_match_accuracy(["true", "false", "left", "yes"], ["true", "true", "left", "no"]) == 0.5


@pytest.mark.parametrize(
    ("caption", "tokens"),
    [
        ("A man's dog, running.", "a man 's dog running"),
        ("Don't stop!", "do n't stop"),
        ('(Red) black-and-white "3.5" m...', "red black-and-white 3.5 m"),
        ("Two  shapes;\ton a grid: ok?", "two shapes on a grid ok"),
    ],
)
def test_coco_tokenize(caption, tokens):
    assert coco_tokenize(caption) == tokens


# An independent CIDEr-D and BLEU-4, from the coco-caption definitions (not its code).


def ngrams(words: list[str], n: int) -> Counter:
    """Returns the counts of the n-grams of a word list."""
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def reference_bleu4(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4: clipped n-gram precisions summed over the corpus, geometric mean, brevity penalty from the
    summed closest reference lengths (ties: the shorter), no smoothing."""
    correct, guessed, test_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for prediction, refs in zip(predictions, references, strict=True):
        words, ref_words = prediction.split(), [r.split() for r in refs]
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(1, 5):
            best = Counter()
            for r in ref_words:
                best |= ngrams(r, n)
            correct[n - 1] += sum(min(k, best[g]) for g, k in ngrams(words, n).items())
            guessed[n - 1] += max(0, len(words) - n + 1)
    score = math.exp(sum(math.log(c / g) for c, g in zip(correct, guessed, strict=True)) / 4)
    return score * (math.exp(1 - ref_len / test_len) if test_len < ref_len else 1.0)


def reference_cider_d(predictions: list[str], references: list[list[str]], sigma: float = 6.0) -> float:
    """CIDEr-D: TF-IDF n-gram vectors (IDF over the images' reference sets), the hypothesis' weights clipped at the
    reference's, cosine per n = 1..4 times a Gaussian length penalty, averaged over n and references, ×10. The
    length is coco-caption's: the number of bigrams."""
    doc_freq = Counter(
        g for refs in references for g in {g for r in refs for n in range(1, 5) for g in ngrams(r.split(), n)}
    )
    log_images = math.log(len(references))

    def vector(sentence: str):
        words = sentence.split()
        vec = [
            {g: k * (log_images - math.log(max(1.0, doc_freq[g]))) for g, k in ngrams(words, n).items()}
            for n in range(1, 5)
        ]
        return vec, [math.sqrt(sum(x * x for x in v.values())) for v in vec], max(0, len(words) - 1)

    scores = []
    for prediction, refs in zip(predictions, references, strict=True):
        hyp, hyp_norm, hyp_len = vector(prediction)
        total = 0.0
        for ref in refs:
            vec, norm, length = vector(ref)
            for n in range(4):
                dot = sum(min(x, vec[n].get(g, 0.0)) * vec[n].get(g, 0.0) for g, x in hyp[n].items())
                cosine = dot / (hyp_norm[n] * norm[n]) if hyp_norm[n] and norm[n] else dot
                total += cosine * math.exp(-((hyp_len - length) ** 2) / (2 * sigma**2)) / 4
        scores.append(10 * total / len(refs))
    return sum(scores) / len(scores)


PREDICTIONS = [
    "a man riding a horse on the beach",
    "a cat sitting on a couch",
    "a plate of food",
    "people walking down a street",
]
REFERENCES = [
    [
        "A man rides a horse along the beach.",
        "A person riding a brown horse on the sand.",
        "Man on horseback at the beach.",
    ],
    ["A cat is lying on a sofa.", "A gray cat sitting on a couch.", "The cat sits on the couch's arm."],
    ["A plate of food with broccoli.", "A dish of rice and vegetables.", "Food on a white plate."],
    ["People walking on a busy street.", "A crowd walks down the street.", "Pedestrians on a city sidewalk."],
]


def test_cider_d_and_bleu4_match_an_independent_implementation():
    scores = caption_metrics(PREDICTIONS, REFERENCES)
    tokenised = [[coco_tokenize(r) for r in refs] for refs in REFERENCES]
    assert scores["CIDEr"] == pytest.approx(reference_cider_d(PREDICTIONS, tokenised), rel=1e-9)
    assert scores["BLEU-4"] == pytest.approx(reference_bleu4(PREDICTIONS, tokenised), rel=1e-6)  # coco adds 1e-9 terms
    assert scores == pytest.approx({"CIDEr": 2.3964164188, "BLEU-4": 0.4966115514}, rel=1e-8)


def test_cider_d_takes_its_idf_from_the_evaluated_set():
    alone = caption_metrics(PREDICTIONS[:1], REFERENCES[:1])["CIDEr"]
    assert alone == 0.0  # one image: every n-gram's document frequency equals the number of images, so IDF = 0
    assert caption_metrics(PREDICTIONS[:2], REFERENCES[:2])["CIDEr"] != pytest.approx(
        caption_metrics(PREDICTIONS, REFERENCES)["CIDEr"]
    )


def test_caption_metrics_need_references():
    with pytest.raises(ValueError, match=r"caption: 1 images have no reference captions \(first indices: \[1\]\)"):
        caption_metrics(["a cat", "a dog"], [["a cat"], []])


def test_image_text_average_is_the_table_number():
    # (67.1 + 56.3 + 73.9 + 115.3) / 4, CIDEr x100 as the DoRA and VL-Adapter tables show it
    assert image_text_average(0.671, 0.563, 0.739, 1.153) == pytest.approx(78.15)
