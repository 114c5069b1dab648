"""Writes a SYNTHETIC image-text multi-task set (VQA, GQA, NLVR2, COCO captions) in the real VL-T5 file formats.

    python -m mtllora.benchmarks.image_text_synthetic --out data/cache/synthetic_image_text [--seed 0]
        [--train-per-task 1000] [--eval-per-task 250] [--image-size 96] [--noise 0.1]

No real image-text data can be obtained offline, so this renders small scenes (circles, squares and triangles in
four colours on a 3x3 grid, white background) and asks about them in the four tasks' formats, to exercise every
code path of the image-text benchmark and to give a CPU profile something learnable. Nothing here is real data.

Output, laid out as VL-T5's `datasets/` folder (`mtllora.benchmarks.image_text_data.load_task` reads it):

    README.md, baselines.json
    COCO/dataset_coco.json, COCO/images/COCO_{train,val}2014_<12 digits>.png     captions; VQA's images
    vqa/karpathy_{train,val,test}.json, vqa/trainval_{ans2label,label2ans}.json
    vqa/v2_mscoco_{train,val}2014_annotations.json                               the 10 raw annotator answers
    GQA/{train,valid,testdev}.json, GQA/trainval_{ans2label,label2ans}.json
    VG/images/<digits>.png (GQA train/valid), GQA/images/n<digits>.png (testdev)
    nlvr/{train,valid,test}.json, nlvr/images/<split>-<set>-0-img{0,1}.png

Sizes: about `--train-per-task` training examples per task (captions: 5 references per training image, VQA 5
questions per image, NLVR2 2 statements per image pair) and `--eval-per-task` per evaluation split. VQA answers
come from 10 simulated annotators (right with probability 1 - noise, else a plausible wrong answer; a few
surface variants such as "two" or "Red." exercise the official normalisation), scored into VL-T5's label dicts.
Everything follows from the seed. `baselines.json` holds each task's blind baselines on the test split: the
majority answer, the type / template prior, and the text prior (the most frequent training answer of the same
question or statement, else the type / template prior); a model well above all of them reads the image:

    {"note": ...,
     "vqa": {"split", "majority_answer", "accuracy", "accuracy_official", "score_accuracy",
             "question_type_prior_accuracy", "text_prior_accuracy"},
     "gqa": {"split", "majority_answer", "accuracy", "question_prior_accuracy", "text_prior_accuracy"},
     "nlvr": {"split", "majority_answer", "accuracy", "template_prior_accuracy", "text_prior_accuracy"},
     "caption": {"split", "constant_caption", "CIDEr", "BLEU-4"},
     "average": image-text average (x100) of the majority baselines}

Accuracies and CIDEr are fractions as `mtllora.metrics` returns them (VQA "accuracy" with evaluator "vl-t5").
Features: `python -m mtllora.benchmarks.image_text_features --backbone pixels --images <out>/COCO/images <out>/VG/images
<out>/GQA/images <out>/nlvr/images --output <out>/features/pixels.h5`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from mtllora.metrics import (
    caption_metrics,
    coco_tokenize,
    exact_match_accuracy,
    image_text_average,
    vqa_accuracy,
    vqa_normalize_answer,
    vqa_score_accuracy,
)

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
GRID = 3  # object positions: a 3x3 grid
POSITIONS = {
    (0, 0): "top left",
    (0, 1): "top middle",
    (0, 2): "top right",
    (1, 0): "middle left",
    (1, 1): "center",
    (1, 2): "middle right",
    (2, 0): "bottom left",
    (2, 1): "bottom middle",
    (2, 2): "bottom right",
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_OBJECTS = 5
VQA_QUESTIONS_PER_IMAGE = 5
GQA_QUESTIONS_PER_IMAGE = 3
CAPTIONS_PER_IMAGE = 5
SYNTHETIC = "SYNTHETIC"  # marker written into every record and file that has room for it
NOTE = "SYNTHETIC data from mtllora.benchmarks.image_text_synthetic (rendered shapes), not real VQA/GQA/NLVR2/COCO"


@dataclass(frozen=True)
class Obj:
    """One drawn object: its shape, colour and grid cell."""

    shape: str
    color: str
    row: int
    col: int

    @property
    def name(self) -> str:
        """Returns "red circle": how questions and captions refer to the object."""
        return f"{self.color} {self.shape}"


Scene = tuple[Obj, ...]


def random_scene(rng: random.Random) -> Scene:
    """Returns 1..MAX_OBJECTS objects in distinct cells, in reading order."""
    cells = sorted(rng.sample(sorted(POSITIONS), rng.randint(1, MAX_OBJECTS)))
    return tuple(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), r, c) for r, c in cells)


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Returns the scene drawn on a white square of `size` pixels (objects jittered by a few pixels)."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    radius = cell * 0.36
    for obj in scene:
        jitter = cell * 0.06
        cx = (obj.col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (obj.row + 0.5) * cell + rng.uniform(-jitter, jitter)
        r = radius * rng.uniform(0.85, 1.0)
        color = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        elif obj.shape == "square":
            draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=color)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=color)
    return image


def save_png(image: Image.Image, path: Path) -> None:
    """Writes a PNG that says SYNTHETIC in its text chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("Comment", NOTE)
    image.save(path, pnginfo=info)


def count(scene: Scene, shape: str | None = None, color: str | None = None) -> int:
    """Returns how many objects have the shape and/or colour."""
    return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in scene)


def plural(n: int, noun: str) -> str:
    """Returns "one circle", "two circles", ..."""
    return f"{NUMBER_WORDS[n]} {noun}{'' if n == 1 else 's'}"


def at(scene: Scene, row: int, col: int) -> Obj | None:
    """Returns the object in a cell, or None."""
    return next((o for o in scene if (o.row, o.col) == (row, col)), None)


# ---------------------------------------------------------------------------------------------------------------
# VQA: (question type, answer type, question, answer) candidates of a scene


def vqa_candidates(scene: Scene, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Returns one instantiation of every VQA template that applies to the scene."""
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    obj = rng.choice(scene)
    present = rng.random() < 0.5
    probe = rng.choice(scene).name if present else f"{color} {shape}"
    out = [
        ("how many", "number", f"how many {shape}s are there?", str(count(scene, shape=shape))),
        ("how many", "number", f"how many {color} objects are there?", str(count(scene, color=color))),
        ("is there a", "yes/no", f"is there a {probe}?", "yes" if any(o.name == probe for o in scene) else "no"),
        ("what shape is in the", "other", f"what shape is in the {POSITIONS[obj.row, obj.col]}?", obj.shape),
        ("what color is the", "other", f"what color is the object in the {POSITIONS[obj.row, obj.col]}?", obj.color),
    ]
    unique_shapes = [o for o in scene if count(scene, shape=o.shape) == 1]
    if unique_shapes:
        o = rng.choice(unique_shapes)
        out.append(("what color is the", "other", f"what color is the {o.shape}?", o.color))
    unique_colors = [o for o in scene if count(scene, color=o.color) == 1]
    if unique_colors:
        o = rng.choice(unique_colors)
        out.append(("what shape is the", "other", f"what shape is the {o.color} object?", o.shape))
    return out


def wrong_answer(answer: str, answer_type: str, rng: random.Random) -> str:
    """Returns a plausible wrong answer of the same type (a nearby count, the other yes/no, another colour/shape)."""
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        return str(max(0, int(answer) + rng.choice((-1, 1))))
    pool = SHAPES if answer in SHAPES else tuple(COLORS)
    return rng.choice([a for a in pool if a != answer])


def surface_variant(answer: str, rng: random.Random) -> str:
    """Returns the answer as a careless annotator might type it ("two", "Red.", "a circle"); the official
    normalisation maps each back."""
    if answer.isdigit():
        return NUMBER_WORDS[int(answer)]
    return rng.choice((answer.capitalize(), f"{answer}.", f"a {answer}" if answer not in ("yes", "no") else answer))


def annotate(answer: str, answer_type: str, noise: float, rng: random.Random) -> list[str]:
    """Returns 10 simulated annotator answers: right with probability 1 - noise (5% of those as a surface
    variant), else a plausible wrong answer."""
    answers = []
    for _ in range(10):
        given = answer if rng.random() >= noise else wrong_answer(answer, answer_type, rng)
        answers.append(surface_variant(given, rng) if rng.random() < 0.05 else given)
    return answers


def vqa_label(answers: Sequence[str], vocab: set[str]) -> dict[str, float]:
    """Returns VL-T5's label dict: each normalised vocabulary answer scored by how many annotators gave it
    (1, 2, 3, 4+ -> 0.3, 0.6, 0.9, 1; the LXMERT/bottom-up preprocessing)."""
    counts = Counter(vqa_normalize_answer(a) for a in answers)
    return {a: min(1.0, round(0.3 * n, 1)) for a, n in counts.items() if a in vocab}


VQA_VOCAB = sorted({*SHAPES, *COLORS, "yes", "no", *map(str, range(MAX_OBJECTS + 1))})


# ---------------------------------------------------------------------------------------------------------------
# GQA: relational questions, (template, question, answer)


def gqa_candidates(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """Returns every relational question about objects the scene names uniquely ("the red square")."""
    unique = [o for o in scene if sum(p.name == o.name for p in scene) == 1]
    out = []
    for o in unique:
        for template, (dr, dc), word in (("left", (0, -1), "left of"), ("right", (0, 1), "right of")):
            other = at(scene, o.row + dr, o.col + dc)
            if other is not None:
                out.append((f"shape {template}", f"what shape is {word} the {o.name}?", other.shape))
                out.append((f"color {template}", f"what color is the object {word} the {o.name}?", other.color))
        above, below = at(scene, o.row - 1, o.col), at(scene, o.row + 1, o.col)
        if above is not None:
            out.append(("shape above", f"what shape is above the {o.name}?", above.shape))
        if below is not None:
            out.append(("color below", f"what color is the object below the {o.name}?", below.color))
        if o.col != 1:
            out.append(("side", f"on which side is the {o.name}?", "left" if o.col == 0 else "right"))
        for p in unique:
            if p is not o and p.col != o.col:
                answer = "yes" if o.col < p.col else "no"
                out.append(("is left of", f"is the {o.name} to the left of the {p.name}?", answer))
    rng.shuffle(out)
    return out


GQA_VOCAB = sorted({*SHAPES, *COLORS, "yes", "no", "left", "right"})


# ---------------------------------------------------------------------------------------------------------------
# NLVR2: statements about two scenes, (statement, truth)


NLVR_TEMPLATES = ("more shapes", "more colour", "both contain", "exactly", "top row", "same number")


def nlvr_statement(template: str, left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    """Returns one random instantiation of an NLVR2 statement template about an image pair, and its truth."""
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    if template == "more shapes":
        return (
            f"there are more {shape}s in the left image than in the right image.",
            count(left, shape=shape) > count(right, shape=shape),
        )
    if template == "more colour":
        return (
            f"there are more {color} objects in the right image than in the left image.",
            count(right, color=color) > count(left, color=color),
        )
    if template == "both contain":
        obj = rng.choice(left + right)
        return f"both images contain a {obj.name}.", count(left, obj.shape, obj.color) * count(
            right, obj.shape, obj.color
        ) > 0
    if template == "exactly":
        n = rng.randint(1, 3)
        return f"the left image contains exactly {plural(n, shape)}.", count(left, shape=shape) == n
    if template == "top row":
        return f"there is a {shape} in the top row of the right image.", any(
            o.shape == shape and o.row == 0 for o in right
        )
    return "the two images contain the same number of objects.", len(left) == len(right)


def nlvr_pick(left: Scene, right: Scene, want: bool, rng: random.Random) -> tuple[str, str, bool] | None:
    """Returns (template, statement, truth) with truth == want, from the first template (in random order) that a
    few tries can instantiate so; None when none can. Picking one true and one false statement per pair keeps the
    labels balanced."""
    for template in rng.sample(NLVR_TEMPLATES, len(NLVR_TEMPLATES)):
        for _ in range(10):
            statement, truth = nlvr_statement(template, left, right, rng)
            if truth == want:
                return template, statement, truth
    return None


# ---------------------------------------------------------------------------------------------------------------
# Captions


def object_list(objects: Sequence[Obj], positions: bool = False) -> str:
    """Returns "a red circle, a blue square and a green triangle" (with "in the top left" when asked)."""
    words = [f"a {o.name}" + (f" in the {POSITIONS[o.row, o.col]}" if positions else "") for o in objects]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Returns CAPTIONS_PER_IMAGE different templated captions of the scene (shuffled object order, synonyms)."""
    noun = plural(len(scene), "shape")
    templates: list[Callable[[list[Obj]], str]] = [
        lambda objs: f"{object_list(objs)}.",
        lambda objs: f"{noun} on a white background.",
        lambda objs: f"{rng.choice(('a picture', 'a drawing', 'an image'))} of {object_list(objs)}.",
        lambda objs: f"{object_list(objs, positions=True)}.",
        lambda objs: f"there {'is' if len(objs) == 1 else 'are'} {noun}: {object_list(objs)}.",
        lambda objs: f"{noun} on a grid, {object_list(objs)}.",
    ]
    out = []
    for template in rng.sample(templates, CAPTIONS_PER_IMAGE):
        objects = list(scene)
        rng.shuffle(objects)
        text = template(objects)
        out.append(text[0].upper() + text[1:])  # COCO's raw captions start with a capital
    return out


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_json(path: Path, data: Any) -> None:
    """Writes compact JSON (deterministic: insertion order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_vocab(folder: Path, answers: Sequence[str]) -> None:
    """Writes `trainval_ans2label.json` and `trainval_label2ans.json` in the VL-T5/LXMERT format."""
    write_json(folder / "trainval_ans2label.json", {a: i for i, a in enumerate(answers)})
    write_json(folder / "trainval_label2ans.json", list(answers))


class Generator:
    """Draws scenes and writes the four tasks; one random stream, so the output follows from the seed."""

    def __init__(self, out: Path, seed: int, image_size: int, noise: float):
        self.out, self.image_size, self.noise = out, image_size, noise
        self.rng = random.Random(seed)
        self.next_coco_id = self.next_vg_id = self.next_question_id = 1

    def image(self, path: Path) -> Scene:
        """Returns a new random scene, rendered to `path`."""
        scene = random_scene(self.rng)
        save_png(render(scene, self.image_size, self.rng), path)
        return scene

    def coco(self, train: int, evaluation: int) -> dict[str, Any]:
        """Writes COCO captions (dataset_coco.json) and VQA (Karpathy files + annotations); returns, per split, the
        VQA records, their annotator answers and the images' reference captions (for the baselines)."""
        images, annotations = [], {"train2014": [], "val2014": []}
        vqa, vqa_raw, caption_split = {}, {}, {}
        for split, n_images, n_questions in (
            ("train", math.ceil(train / CAPTIONS_PER_IMAGE), train),
            ("val", evaluation, evaluation),
            ("test", evaluation, evaluation),
        ):
            subtype = "train2014" if split == "train" else "val2014"
            records, raws, refs = [], [], []
            for _ in range(n_images):
                cocoid = self.next_coco_id
                self.next_coco_id += 1
                image_id = f"COCO_{subtype}_{cocoid:012d}"
                scene = self.image(self.out / "COCO" / "images" / f"{image_id}.png")
                sentences = captions(scene, self.rng)
                refs.append(sentences)
                images.append(
                    {
                        "filepath": subtype,
                        "filename": f"{image_id}.png",
                        "imgid": len(images),
                        "split": split,
                        "sentences": [{"raw": s, "tokens": coco_tokenize(s).split()} for s in sentences],
                        "cocoid": cocoid,
                    }
                )
                # VQA asks about the first images of a split only: evaluation splits have one image per caption
                # example but VQA_QUESTIONS_PER_IMAGE questions per image.
                n_asked = min(VQA_QUESTIONS_PER_IMAGE, n_questions - len(records))
                if n_asked <= 0:
                    continue
                candidates = vqa_candidates(scene, self.rng)
                for q, (qtype, atype, question, answer) in enumerate(self.rng.sample(candidates, n_asked)):
                    raw = annotate(answer, atype, self.noise, self.rng)
                    raws.append(raw)
                    label = vqa_label(raw, set(VQA_VOCAB))
                    question_id = cocoid * 1000 + q
                    records.append(
                        {
                            "answer_type": atype,
                            "img_id": image_id,
                            "label": label,
                            "question_id": question_id,
                            "question_type": qtype,
                            "sent": question,
                            "is_topk_optimal": bool(label),
                            "note": SYNTHETIC,
                        }
                    )
                    annotations[subtype].append(
                        {
                            "question_type": qtype,
                            "multiple_choice_answer": Counter(raw).most_common(1)[0][0],
                            "answers": [
                                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(raw)
                            ],
                            "image_id": cocoid,
                            "answer_type": atype,
                            "question_id": question_id,
                        }
                    )
            vqa[split], vqa_raw[split], caption_split[split] = records, raws, refs
            write_json(self.out / "vqa" / f"karpathy_{split}.json", records)
        write_json(self.out / "COCO" / "dataset_coco.json", {"dataset": f"coco ({SYNTHETIC})", "images": images})
        for subtype, items in annotations.items():
            info = {"description": NOTE}
            write_json(
                self.out / "vqa" / f"v2_mscoco_{subtype}_annotations.json",
                {"info": info, "license": {}, "data_subtype": subtype, "annotations": items},
            )
        write_vocab(self.out / "vqa", VQA_VOCAB)
        return {"vqa": vqa, "vqa_raw": vqa_raw, "caption": caption_split}

    def gqa(self, train: int, evaluation: int) -> dict[str, list[dict[str, Any]]]:
        """Writes GQA train/valid (VG images) and testdev (GQA images); returns the records with their templates."""
        splits = {}
        for split, n, folder, prefix in (
            ("train", train, "VG", ""),
            ("valid", evaluation, "VG", ""),
            ("testdev", evaluation, "GQA", "n"),
        ):
            records: list[dict[str, Any]] = []
            while len(records) < n:
                image_id = f"{prefix}{self.next_vg_id}"
                self.next_vg_id += 1
                scene = self.image(self.out / folder / "images" / f"{image_id}.png")
                candidates = gqa_candidates(scene, self.rng)
                for template, question, answer in candidates[: min(GQA_QUESTIONS_PER_IMAGE, n - len(records))]:
                    self.next_question_id += 1
                    records.append(
                        {
                            "img_id": image_id,
                            "label": {answer: 1.0},
                            "question_id": f"{self.next_question_id:08d}",
                            "sent": question,
                            "note": SYNTHETIC,
                            "template": template,
                        }
                    )
            splits[split] = records
            write_json(self.out / "GQA" / f"{split}.json", records)
        write_vocab(self.out / "GQA", GQA_VOCAB)
        return splits

    def nlvr(self, train: int, evaluation: int) -> dict[str, list[dict[str, Any]]]:
        """Writes NLVR2 train/valid/test: image pairs with one true and one false statement each when possible."""
        splits = {}
        for split, prefix, n in (
            ("train", "train", train),
            ("valid", "dev", evaluation),
            ("test", "test1", evaluation),
        ):
            records: list[dict[str, Any]] = []
            pair = 0
            while len(records) < n:
                stem = f"{prefix}-{pair}-0"
                left = self.image(self.out / "nlvr" / "images" / f"{stem}-img0.png")
                right = self.image(self.out / "nlvr" / "images" / f"{stem}-img1.png")
                chosen = [c for c in (nlvr_pick(left, right, want, self.rng) for want in (True, False)) if c]
                self.rng.shuffle(chosen)
                for k, (template, statement, truth) in enumerate(chosen[: n - len(records)]):
                    records.append(
                        {
                            "identifier": f"{stem}-{k}",
                            "img0": f"{stem}-img0",
                            "img1": f"{stem}-img1",
                            "label": int(truth),
                            "sent": statement[0].upper() + statement[1:],
                            "uid": f"nlvr2_{split}_{len(records)}",
                            "note": SYNTHETIC,
                            "template": template,
                        }
                    )
                pair += 1
            splits[split] = records
            write_json(self.out / "nlvr" / f"{split}.json", records)
        return splits


def majority(values: Sequence[str]) -> str:
    """Returns the most frequent value (the first seen among ties)."""
    return Counter(values).most_common(1)[0][0]


def prior(train: Sequence[tuple[str, str]], test_keys: Sequence[str], fallback: Sequence[str] | str) -> list[str]:
    """Returns, for each test key, the most frequent training answer of that key (a text-only prior), else the
    fallback (one answer, or one per test key)."""
    by_key = defaultdict(list)
    for key, answer in train:
        by_key[key].append(answer)
    best = {key: majority(answers) for key, answers in by_key.items()}
    fallbacks = [fallback] * len(test_keys) if isinstance(fallback, str) else fallback
    return [best.get(key, other) for key, other in zip(test_keys, fallbacks, strict=True)]


def baselines(coco: dict[str, Any], gqa: dict[str, list], nlvr: dict[str, list]) -> dict[str, Any]:
    """Returns the majority (and text-only prior) baselines of each task on its test split."""
    vqa_train, vqa_test, test_raw = coco["vqa"]["train"], coco["vqa"]["test"], coco["vqa_raw"]["test"]
    best = [max(r["label"], key=r["label"].get) if r["label"] else "" for r in vqa_train]
    vqa_major = majority(best)
    type_prior = prior(
        [(r["question_type"], b) for r, b in zip(vqa_train, best, strict=True)],
        [r["question_type"] for r in vqa_test],
        vqa_major,
    )
    gqa_train = gqa["train"] + gqa["valid"]  # the official run trains GQA on train+valid
    gqa_answers = [next(iter(r["label"])) for r in gqa["testdev"]]
    gqa_major = majority([next(iter(r["label"])) for r in gqa_train])
    gqa_prior = prior(
        [(r["template"], next(iter(r["label"]))) for r in gqa_train], [r["template"] for r in gqa["testdev"]], gqa_major
    )
    nlvr_answers = ["true" if r["label"] else "false" for r in nlvr["test"]]
    nlvr_major = majority(["true" if r["label"] else "false" for r in nlvr["train"]])
    nlvr_prior = prior(
        [(r["template"], "true" if r["label"] else "false") for r in nlvr["train"]],
        [r["template"] for r in nlvr["test"]],
        nlvr_major,
    )
    # The strongest blind baseline: the most frequent training answer of the same question or statement text,
    # falling back to the type / template prior.
    vqa_text = prior(
        [(r["sent"], b) for r, b in zip(vqa_train, best, strict=True)], [r["sent"] for r in vqa_test], type_prior
    )
    gqa_text = prior(
        [(r["sent"], next(iter(r["label"]))) for r in gqa_train], [r["sent"] for r in gqa["testdev"]], gqa_prior
    )
    nlvr_text = prior(
        [(r["sent"], "true" if r["label"] else "false") for r in nlvr["train"]],
        [r["sent"] for r in nlvr["test"]],
        nlvr_prior,
    )
    train_refs = [coco_tokenize(ref) for refs in coco["caption"]["train"] for ref in refs]
    constant = majority(train_refs)
    test_refs = coco["caption"]["test"]
    caption = caption_metrics([constant] * len(test_refs), test_refs)
    out = {
        "note": f"{NOTE}. Majority baselines on each task's test split; fractions as mtllora.metrics returns them.",
        "vqa": {
            "split": "karpathy_test",
            "majority_answer": vqa_major,
            "accuracy": vqa_accuracy([vqa_major] * len(vqa_test), test_raw, evaluator="vl-t5"),
            "accuracy_official": vqa_accuracy([vqa_major] * len(vqa_test), test_raw),
            "score_accuracy": vqa_score_accuracy([vqa_major] * len(vqa_test), [r["label"] for r in vqa_test]),
            "question_type_prior_accuracy": vqa_accuracy(type_prior, test_raw, evaluator="vl-t5"),
            "text_prior_accuracy": vqa_accuracy(vqa_text, test_raw, evaluator="vl-t5"),
        },
        "gqa": {
            "split": "testdev",
            "majority_answer": gqa_major,
            "accuracy": exact_match_accuracy([gqa_major] * len(gqa_answers), gqa_answers),
            "question_prior_accuracy": exact_match_accuracy(gqa_prior, gqa_answers),
            "text_prior_accuracy": exact_match_accuracy(gqa_text, gqa_answers),
        },
        "nlvr": {
            "split": "test",
            "majority_answer": nlvr_major,
            "accuracy": exact_match_accuracy([nlvr_major] * len(nlvr_answers), nlvr_answers),
            "template_prior_accuracy": exact_match_accuracy(nlvr_prior, nlvr_answers),
            "text_prior_accuracy": exact_match_accuracy(nlvr_text, nlvr_answers),
        },
        "caption": {"split": "karpathy_test", "constant_caption": constant, **caption},
    }
    out["average"] = image_text_average(
        out["vqa"]["accuracy"], out["gqa"]["accuracy"], out["nlvr"]["accuracy"], out["caption"]["CIDEr"]
    )
    return out


def write_readme(out: Path, args: argparse.Namespace, counts: dict[str, dict[str, int]], base: dict[str, Any]) -> None:
    """Writes the folder's README: what it is (SYNTHETIC), how it was made, its files and sizes, its baselines."""
    rows = "\n".join(
        f"| {task} | " + ", ".join(f"{split} {n}" for split, n in splits.items()) + " |"
        for task, splits in counts.items()
    )
    command = (
        f"python -m mtllora.benchmarks.image_text_synthetic --seed {args.seed} --train-per-task {args.train_per_task} "
        f"--eval-per-task {args.eval_per_task} --image-size {args.image_size} --noise {args.noise}"
    )
    vqa, gqa, nlvr, caption = (base[task] for task in ("vqa", "gqa", "nlvr", "caption"))

    def row(name: str, result: dict[str, Any], value: str, answer: str, prior_key: str | None) -> str:
        priors = [f"{100 * result[key]:.1f}" if key else "" for key in (prior_key, prior_key and "text_prior_accuracy")]
        return f'| {name} | {100 * result[value]:.1f} ("{result[answer]}") | {" | ".join(priors)} |'

    table = "\n".join(
        (
            row("VQA accuracy", vqa, "accuracy", "majority_answer", "question_type_prior_accuracy"),
            row("GQA accuracy", gqa, "accuracy", "majority_answer", "question_prior_accuracy"),
            row("NLVR2 accuracy", nlvr, "accuracy", "majority_answer", "template_prior_accuracy"),
            row("COCO CIDEr", caption, "CIDEr", "constant_caption", None),
            f"| average | {base['average']:.1f} | | |",
        )
    )
    text = f"""# SYNTHETIC image-text data (not real VQAv2 / GQA / NLVR2 / COCO)

Everything in this folder is SYNTHETIC: rendered scenes of circles, squares and triangles in four colours on a
3x3 grid, with questions, statements and captions generated from templates, written by

    {command}

It exists to exercise the image-text benchmark's code paths offline and to give a CPU profile something
learnable; its numbers say nothing about the real benchmarks.

The files use the real VL-T5 formats and names (see the script's docstring). Records carry `"note": "SYNTHETIC"`
(GQA and NLVR2 records also their generating `template`), JSON objects an info or dataset field saying so, and the
PNGs a text chunk; the answer vocabulary files of `vqa/` and `GQA/` are bare mappings, as the real ones are, and
hold this set's answers only.

| task | examples per split |
|---|---|
{rows}

Baselines on the test splits (`baselines.json`); a model must do well above them:

| task | majority | type / template prior | text prior |
|---|---|---|---|
{table}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Writes the set and returns its baselines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (a VL-T5 datasets/ layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-task", type=int, default=1000, help="about this many training examples per task")
    parser.add_argument("--eval-per-task", type=int, default=250, help="examples per task in each evaluation split")
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--noise", type=float, default=0.1, help="chance that a VQA annotator answers wrongly")
    args = parser.parse_args(argv)
    if args.train_per_task < 2 or args.eval_per_task < 2:
        parser.error("--train-per-task and --eval-per-task must be at least 2 (NLVR2 writes statements in pairs)")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} exists and is not empty; choose a new folder")
    start = time.perf_counter()
    generator = Generator(args.out, args.seed, args.image_size, args.noise)
    coco = generator.coco(args.train_per_task, args.eval_per_task)
    gqa = generator.gqa(args.train_per_task, args.eval_per_task)
    nlvr = generator.nlvr(args.train_per_task, args.eval_per_task)
    base = baselines(coco, gqa, nlvr)
    write_json(args.out / "baselines.json", base)
    counts = {
        "vqa": {f"karpathy_{s}": len(r) for s, r in coco["vqa"].items()},
        "gqa": {s: len(r) for s, r in gqa.items()},
        "nlvr": {s: len(r) for s, r in nlvr.items()},
        "caption": {
            "karpathy_train": CAPTIONS_PER_IMAGE * len(coco["caption"]["train"]),
            "karpathy_val": len(coco["caption"]["val"]),
            "karpathy_test": len(coco["caption"]["test"]),
        },
    }
    write_readme(args.out, args, counts, base)
    n_images = sum(1 for _ in args.out.rglob("*.png"))
    print(f"SYNTHETIC image-text set in {args.out}: {n_images} images, {time.perf_counter() - start:.1f} s")
    for task, splits in counts.items():
        print(f"  {task}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
    print("baselines (test splits):", json.dumps({k: v for k, v in base.items() if k != "note"}, indent=1))
    return base


if __name__ == "__main__":
    main()
