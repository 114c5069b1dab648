"""VL-BART on a tiny random config: the encoder input layout (text, then visual tokens), loss and loading, adapters in
every attention (encoder, decoder, cross) under task ids, and batched image-text generation equal to one-by-one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F
from transformers import BartConfig, BartForConditionalGeneration

from mtllora.adapters import AdapterConfig, apply_adapters, use_tasks
from mtllora.adapters import mtl_lora as mtl_lora_module
from mtllora.adapters.mtl_lora import MTLLoRALinear
from mtllora.benchmarks.generation import generate_image_text
from mtllora.vl_bart import (
    VLBartForConditionalGeneration,
    concat_images,
    object_order_ids,
)

from .conftest import randomize_adapters

FEAT_DIM = 8
WORDS = ["what", "is", "the", "color", "of", "cat", "dog", "red", "blue", "true", "false", "yes", "no", "a", "caption"]
NUM_TASKS = 4  # vqa, gqa, nlvr, caption


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: more threads only add overhead, and each parallel region can stall for milliseconds on a
    shared machine (the generation tests took 20-28 s each with 2 threads next to a training run, < 0.5 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config() -> BartConfig:
    return BartConfig(
        vocab_size=4 + len(WORDS),
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    )


def tiny_vl_bart(seed: int = 0) -> VLBartForConditionalGeneration:
    torch.manual_seed(seed)
    return VLBartForConditionalGeneration(tiny_config(), feat_dim=FEAT_DIM).double().eval()


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level fast tokenizer with BART's special tokens and template (<s> text </s>), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _batch(seed: int = 0, visual: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.tensor([[0, 4, 5, 6, 7, 2], [0, 8, 9, 2, 1, 1]])
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids.ne(1).long(),
        "vis_feats": torch.randn(2, visual, FEAT_DIM, generator=gen, dtype=torch.float64),
        "vis_pos": torch.rand(2, visual, 4, generator=gen, dtype=torch.float64),
        "labels": torch.tensor([[10, 11, 2], [12, 2, -100]]),
    }


def test_forward_appends_visual_tokens_and_computes_barts_loss():
    model = tiny_vl_bart()
    batch = _batch()
    out = model(**batch)
    assert out.encoder_last_hidden_state.shape == (2, 6 + 3, 16)  # text positions, then the visual tokens
    assert out.logits.shape == (2, 3, model.config.vocab_size)
    # BART's loss: decoder inputs are the labels shifted right (decoder start token first, -100 → pad), -100 ignored.
    decoder_input_ids = torch.tensor([[2, 10, 11], [2, 12, 2]])
    explicit = model(**{k: v for k, v in batch.items() if k != "labels"}, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(explicit.logits, out.logits)
    expected = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), batch["labels"].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    # The image matters; padding text does not (right padding, masked).
    other = model(**{**batch, "vis_feats": batch["vis_feats"] + 1.0})
    assert not torch.allclose(other.logits, out.logits)
    padded = {k: v for k, v in batch.items() if k != "labels"}
    padded["input_ids"] = F.pad(batch["input_ids"], (0, 3), value=1)
    padded["attention_mask"] = F.pad(batch["attention_mask"], (0, 3))
    torch.testing.assert_close(model(**padded, decoder_input_ids=decoder_input_ids).logits, out.logits)


def test_visual_embedding_follows_vl_t5():
    model = tiny_vl_bart()
    emb = model.model.encoder.visual_embedding
    gen = torch.Generator().manual_seed(0)
    feats_a, feats_b = (torch.randn(2, 3, FEAT_DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    boxes_a, boxes_b = (torch.rand(2, 3, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    feats, boxes, img_ids = concat_images([feats_a, feats_b], [boxes_a, boxes_b])  # NLVR2's two images
    assert feats.shape == (2, 6, FEAT_DIM) and boxes.shape == (2, 6, 4)
    assert img_ids.tolist() == [[0, 0, 0, 1, 1, 1]] * 2
    assert object_order_ids(img_ids, 2).tolist() == [[0, 1, 2, 0, 1, 2]] * 2
    # VL-T5's fifth coordinate, (pos[3] - pos[2]) · (pos[1] - pos[0]), then each part by hand.
    fifth = (boxes[..., 3] - boxes[..., 2]) * (boxes[..., 1] - boxes[..., 0])
    expected = (
        emb.feat_embedding(feats)
        + emb.absolute_vis_pos_embedding(torch.cat([boxes, fifth.unsqueeze(-1)], dim=-1))
        + emb.img_order_embedding(img_ids)
        + emb.obj_order_embedding(torch.tensor([0, 1, 2, 0, 1, 2]))
    )
    torch.testing.assert_close(emb(feats, boxes, img_ids), expected)
    with pytest.raises(ValueError, match=r"img_order_ids must have shape \(2, 6\) with ids in 0..1"):
        emb(feats, boxes, img_ids + 1)
    with pytest.raises(ValueError, match="more than n_obj_orders=100"):
        emb(torch.zeros(1, 101, FEAT_DIM, dtype=torch.float64), torch.zeros(1, 101, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="the model feat_dim=8"):
        model(**{**_batch(), "vis_feats": torch.zeros(2, 3, 5, dtype=torch.float64)})


def test_loads_bart_weights_and_initialises_the_visual_embedding(tmp_path):
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(tiny_config())
    bart.save_pretrained(tmp_path / "bart")
    model = VLBartForConditionalGeneration.from_pretrained(tmp_path / "bart", feat_dim=FEAT_DIM)
    bart_params = dict(bart.named_parameters())
    for name, param in model.named_parameters():
        if "visual_embedding" in name:
            continue
        torch.testing.assert_close(param, bart_params[name], msg=name)
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight  # still tied
    emb = model.model.encoder.visual_embedding
    assert emb.feat_embedding[0].weight.detach().std().item() == pytest.approx(model.config.init_std, rel=0.5)
    assert torch.equal(emb.feat_embedding[1].weight, torch.ones(16))  # LayerNorm: weight 1, bias 0
    assert model.config.feat_dim == FEAT_DIM and model.config.n_images == 2
    model.save_pretrained(tmp_path / "vl")
    again = VLBartForConditionalGeneration.from_pretrained(tmp_path / "vl")
    assert again.config.feat_dim == FEAT_DIM
    torch.testing.assert_close(
        again.model.encoder.visual_embedding.feat_embedding[0].weight, emb.feat_embedding[0].weight
    )
    with pytest.raises(ValueError, match="feat_dim must be a positive integer, got 0"):
        VLBartForConditionalGeneration(tiny_config(), feat_dim=0)


def _mtl_lora(model, **overrides):
    config = AdapterConfig(
        method="mtl_lora",
        r=8,
        alpha=16,
        target_modules=["q_proj", "v_proj"],
        num_tasks=NUM_TASKS,
        num_up=2,
        temperature=0.8,
        **overrides,
    )
    apply_adapters(model, config)
    randomize_adapters(model, std=0.5)  # B = 0 at init: every task would give the base model's output
    return model


def _record_task_ids(monkeypatch) -> dict[str, list[list[int]]]:
    seen: dict[str, list[list[int]]] = {}
    original = MTLLoRALinear.task_ids

    def recording(self, x):
        ids = original(self, x)
        seen.setdefault(self.name, []).append(ids.tolist())
        return ids

    monkeypatch.setattr(MTLLoRALinear, "task_ids", recording)
    return seen


def test_adapters_reach_encoder_decoder_and_cross_attention_under_task_ids(monkeypatch):
    model = _mtl_lora(tiny_vl_bart(), trainable=["visual_embedding", r"\.bias$", r"layer_?norm"])
    adapted = sorted(name for name, m in model.named_modules() if isinstance(m, MTLLoRALinear))
    kinds = {name.split(".layers.")[0] + "." + name.split(".")[-2] for name in adapted}
    assert kinds == {"model.encoder.self_attn", "model.decoder.self_attn", "model.decoder.encoder_attn"}
    assert len(adapted) == 2 * 2 + 2 * 2 * 2  # q and v: 2 encoder layers, 2 decoder layers × (self + cross)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    visual = {name for name, _ in model.named_parameters() if "visual_embedding" in name}
    assert len(visual) == 10 and visual <= trainable
    assert "model.encoder.layers.0.self_attn.q_proj.base_layer.bias" in trainable
    assert "model.encoder.layernorm_embedding.weight" in trainable
    assert "model.encoder.layers.0.self_attn.q_proj.base_layer.weight" not in trainable

    seen = _record_task_ids(monkeypatch)
    batch = _batch()
    out = model(**batch, task_ids=torch.tensor([3, 1]))
    assert set(seen) == set(adapted) and all(ids == [[3, 1]] for ids in seen.values())
    out.loss.backward()
    assert model.model.encoder.visual_embedding.feat_embedding[0].weight.grad is not None
    # The task id changes each sample's output.
    other = model(**batch, task_ids=torch.tensor([0, 1])).logits
    assert not torch.allclose(other[0], out.logits[0]) and torch.allclose(other[1], out.logits[1])

    seen.clear()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with use_tasks(model, torch.tensor([3, 1])):
        model.generate(**inputs, num_beams=3, max_new_tokens=3, do_sample=False)
    # Beams expand each sample's rows; every layer sees each sample's id on its 3 rows.
    assert set(seen) == set(adapted)
    assert [3, 1] in seen["model.encoder.layers.0.self_attn.q_proj"]
    assert all(ids == [3, 3, 3, 1, 1, 1] for ids in seen["model.decoder.layers.1.encoder_attn.v_proj"])


def _examples(count: int = 7):
    """Mixed tasks, text lengths and visual token counts (NLVR2-like examples have two images of 3 tokens)."""
    gen = torch.Generator().manual_seed(0)
    prompts, feats, boxes, img_ids, tasks = [], [], [], [], []
    for i in range(count):
        task = [0, 2, 1, 3, 2, 0, 1][i % 7]
        prompts.append(" ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + 2 * i % 5)))
        images = 2 if task == 2 else 1
        per_image = [torch.randn(3, FEAT_DIM, generator=gen, dtype=torch.float64) for _ in range(images)]
        per_box = [torch.rand(3, 4, generator=gen, dtype=torch.float64) for _ in range(images)]
        f, b, ids = concat_images(per_image, per_box)
        feats.append(f)
        boxes.append(b)
        img_ids.append(ids)
        tasks.append(task)
    return prompts, feats, boxes, img_ids, tasks


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("path", ["grouped", "gathered"])
def test_batched_generation_with_mixed_tasks_equals_one_by_one(tokenizer, num_beams, path, monkeypatch):
    if path == "gathered":
        monkeypatch.setattr(mtl_lora_module, "GATHER_MIN_TOKENS_PER_RANK", 0)
    model = _mtl_lora(tiny_vl_bart())
    prompts, feats, boxes, img_ids, tasks = _examples()
    kwargs = {"img_order_ids": img_ids, "max_new_tokens": 6, "num_beams": num_beams}
    batched = generate_image_text(model, tokenizer, prompts, feats, boxes, tasks, batch_size=4, **kwargs)
    single = [
        generate_image_text(
            model,
            tokenizer,
            [prompts[i]],
            [feats[i]],
            [boxes[i]],
            [tasks[i]],
            **{**kwargs, "img_order_ids": [img_ids[i]]},
        )[0]
        for i in range(len(prompts))
    ]
    assert batched == single
    assert len(set(batched)) > 1, batched
    swapped = [(t + 1) % NUM_TASKS for t in tasks]
    other = generate_image_text(model, tokenizer, prompts, feats, boxes, swapped, batch_size=4, **kwargs)
    assert other != batched, "the task id must change what is generated"


def test_generation_checks_its_inputs(tokenizer):
    model = tiny_vl_bart()
    prompts, feats, boxes, _, tasks = _examples(2)
    with pytest.raises(ValueError, match="2 prompts but 1 vis_pos; pass one per prompt"):
        generate_image_text(model, tokenizer, prompts, feats, boxes[:1], tasks)
    with pytest.raises(ValueError, match="VL-BART generation needs vis_feats and vis_pos"):
        model.generate(torch.tensor([[0, 4, 2]]))


def test_a_hugging_face_trainer_trains_it_from_vl_batches(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _mtl_lora(tiny_vl_bart().float(), trainable=["visual_embedding"])
    start = copy.deepcopy({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    gen = torch.Generator().manual_seed(0)
    rows = [
        {
            "input_ids": torch.tensor([0, 4 + i % 5, 5, 2]),
            "attention_mask": torch.ones(4, dtype=torch.long),
            "vis_feats": torch.randn(3, FEAT_DIM, generator=gen),
            "vis_pos": torch.rand(3, 4, generator=gen),
            "labels": torch.tensor([10 + i % 3, 2]),
            "task_ids": torch.tensor(i % NUM_TASKS),
        }
        for i in range(8)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert result.training_loss > 0
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, start[n])}
    assert any("visual_embedding" in n for n in changed) and any("lora_B" in n for n in changed)
