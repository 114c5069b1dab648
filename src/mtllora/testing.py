"""Tiny data fixtures shared by the tests and the GPU check (scripts/gpu_check.py), written from code, offline."""

from __future__ import annotations

from pathlib import Path

WORDS = ["the", "a", "movie", "film", "story", "plot", "actor", "scene", "music", "very", "quite", "rather", "really"]


def _sentence(rng, label: int) -> str:
    words = list(rng.choice(WORDS, size=6))
    words.insert(int(rng.integers(0, 6)), "good" if label else "bad")
    return " ".join(words)


def write_tiny_glue(root: Path, rows: int = 48, seed: int = 0) -> Path:
    """Writes learnable CoLA/SST-2/MRPC/STS-B/RTE train and dev tsvs in the GLUE download layout under `root`
    (label 1 / high score iff the first sentence says "good"); returns root."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", rows), ("dev", rows // 2)):
        labels = rng.integers(0, 2, size=n)
        files = {
            "CoLA": [f"src\t{y}\t*\t{_sentence(rng, y)}" for y in labels],
            "SST-2": ["sentence\tlabel"] + [f"{_sentence(rng, y)}\t{y}" for y in labels],
            "MRPC": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
            + [f"{y}\t{i}\t{i + 1}\t{_sentence(rng, y)}\t{_sentence(rng, 1)}" for i, y in enumerate(labels)],
            "STS-B": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
            + [
                f"{i}\tg\tf\t2012\t{i}\ts1\ts2\t{_sentence(rng, y)}\t{_sentence(rng, 1)}\t{4.0 * y + 0.5:.3f}"
                for i, y in enumerate(labels)
            ],
            "RTE": ["index\tsentence1\tsentence2\tlabel"]
            + [
                f"{i}\t{_sentence(rng, 1 - y)}\t{_sentence(rng, 1)}\t{'entailment' if y == 0 else 'not_entailment'}"
                for i, y in enumerate(labels)
            ],
        }
        for directory, lines in files.items():
            (root / directory).mkdir(parents=True, exist_ok=True)
            (root / directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root
