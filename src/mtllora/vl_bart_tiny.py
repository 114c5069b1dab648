"""A tiny random VL-BART for the image-text CPU profile and tests, where facebook/bart-base cannot be downloaded.

Writes a `save_pretrained` folder: a random VLBartForConditionalGeneration (`--d-model`, `--layers` encoder and
decoder layers) and a word-level tokenizer whose vocabulary is every word of a VL-T5 `datasets/` folder's texts
(questions, statements, answers, captions, task prompts), with BART's special tokens (<s> 0, <pad> 1, </s> 2,
<unk> 3) and BART's framing (<s> text </s>). The weights are random: on this model only what the method trains
(adapters, biases, LayerNorms, the visual embedding) can learn, which is what the profile measures. They are drawn
with std 1/sqrt(d_model) (`--init-std`), the scale of trained weights: BART's 0.02 suits d_model 768, and at d_model
128 its frozen layers pass so little of the image through that the image-text CPU profile's captions came out the
same for every image (CIDEr 0.45 against 0.81 at 1/sqrt(d_model), same budget).

    python -m mtllora.vl_bart_tiny --data data/synthetic_image_text --feat-dim 128 --out DIR
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BartConfig, PreTrainedTokenizerFast

from mtllora.benchmarks.image_text_data import (
    OFFICIAL_SPLITS,
    TASK_PROMPTS,
    input_text,
    load_answer_vocab,
    load_task,
)
from mtllora.vl_bart import VLBartForConditionalGeneration

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def dataset_texts(data_dir: Path) -> list[str]:
    """Returns every text the benchmark reads or generates on the folder's official splits: the inputs with their
    task prompts, the targets, annotator answers, caption references and the answer vocabularies (not ids)."""
    texts = list(TASK_PROMPTS.values())
    for task, splits in OFFICIAL_SPLITS.items():
        for split in dict.fromkeys(splits.values()):
            for record in load_task(task, split, data_dir).records:
                texts += [input_text(record), *record.targets, *(record.answers or ()), *record.references]
    for vocab in sorted(data_dir.glob("*/trainval_ans2label.json")):
        texts += list(load_answer_vocab(vocab))
    return texts


def main() -> None:
    """Command line (see the module docstring): writes the model and its tokenizer to --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a VL-T5 datasets/ folder (its texts)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--feat-dim", type=int, required=True, help="the image features' size")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-std", type=float, help="std of the random weights (default 1/sqrt(d_model); BART's 0.02 is for d 768)"
    )
    args = parser.parse_args()

    split = pre_tokenizers.Whitespace()
    words = sorted({w for text in dataset_texts(args.data) for w, _ in split.pre_tokenize_str(text)})
    words = [w for w in words if w not in SPECIALS and not re.fullmatch(r"\s*", w)]
    vocab = {token: i for i, token in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(args.out)
    torch.manual_seed(args.seed)
    config = BartConfig(
        vocab_size=len(vocab),
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model,
        max_position_embeddings=128,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        init_std=args.init_std or args.d_model**-0.5,
    )
    VLBartForConditionalGeneration(config, feat_dim=args.feat_dim).save_pretrained(args.out)
    size = f"d_model {args.d_model}, {args.layers}+{args.layers} layers, vocab {len(vocab)}"
    print(f"tiny VL-BART ({size}) -> {args.out}")


if __name__ == "__main__":
    main()
