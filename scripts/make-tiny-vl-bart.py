"""A tiny random VL-BART for the image-text CPU profile and tests, where facebook/bart-base cannot be downloaded.

Writes a `save_pretrained` folder: a random VLBartForConditionalGeneration (`--d-model`, `--layers` encoder and
decoder layers) and a word-level tokenizer whose vocabulary is every word of a VL-T5 `datasets/` folder's texts
(questions, statements, answers, captions, task prompts), with BART's special tokens (<s> 0, <pad> 1, </s> 2,
<unk> 3) and BART's framing (<s> text </s>). The weights are random: on this model only what the method trains
(adapters, biases, LayerNorms, the visual embedding) can learn, which is what the profile measures.

    python scripts/make-tiny-vl-bart.py --data data/synthetic_image_text --feat-dim 128 --out DIR
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BartConfig, PreTrainedTokenizerFast

from mtllora.benchmarks.image_text_data import TASK_PROMPTS
from mtllora.vl_bart import VLBartForConditionalGeneration

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def dataset_texts(data_dir: Path) -> list[str]:
    """Returns every string value of the folder's JSON files (records, captions, vocabularies) and the prompts."""
    texts = list(TASK_PROMPTS.values())

    def walk(node: object) -> None:
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, dict):
            texts.extend(str(key) for key in node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(data_dir.rglob("*.json")):
        walk(json.loads(path.read_text()))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a VL-T5 datasets/ folder (its texts)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--feat-dim", type=int, required=True, help="the image features' size")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
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
    )
    VLBartForConditionalGeneration(config, feat_dim=args.feat_dim).save_pretrained(args.out)
    size = f"d_model {args.d_model}, {args.layers}+{args.layers} layers, vocab {len(vocab)}"
    print(f"tiny VL-BART ({size}) -> {args.out}")


if __name__ == "__main__":
    main()
