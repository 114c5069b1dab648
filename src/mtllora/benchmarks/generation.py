"""What every generative benchmark needs: batched generation, each sample under its own task id.

Prompts are sorted by length and generated in left-padded batches (greedy or beam search; right-padded text plus
visual tokens for image-text encoder-decoders, `generate_image_text`), so that a batch wastes little on padding;
every row of a batch runs under its own task id (`use_tasks`), so tasks can share a batch. With `merged=True` the
adapter leaves the decode loop: each task's rows are generated in batches of their own with the task's update merged
into a copy of the adapted weights (`merged_weights`), and the adapter layers are put back afterwards, untouched.
Evaluation is sharded over ranks (rank r takes every world-th prompt) and gathered on every rank; under DeepSpeed
ZeRO-3 all ranks step through the same number of `generate` calls (`synced_gpus`). Outputs come back in the
prompts' order.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Trainer

from ..adapters import adapter_layers, get_adapter_config, use_tasks
from ..fileio import write_atomic

logger = logging.getLogger(__name__)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def needs_synced_gpus(trainer: Trainer) -> bool:
    """Whether `trainer` runs under DeepSpeed ZeRO-3, whose partitioned weights need every rank in every forward:
    its generation must pass `synced_gpus=True`."""
    config = trainer.args.hf_deepspeed_config.config if trainer.is_deepspeed_enabled else {}
    return config.get("zero_optimization", {}).get("stage") == 3


def eval_merged(trainer: Trainer, requested: bool) -> bool:
    """Whether a benchmark evaluates with each task's update merged (`generate(merged=True)`): as `requested` (its
    `eval_merged`), except under DeepSpeed ZeRO-3, whose weights are partitioned across ranks and cannot be merged;
    there the adapters stay in the decode loop, and the log says so."""
    if requested and needs_synced_gpus(trainer):
        logger.info("DeepSpeed ZeRO-3 partitions the weights: evaluating with the adapters unmerged")
        return False
    return requested


@contextlib.contextmanager
def merged_weights(model: nn.Module, task_id: int | None) -> Iterator[None]:
    """Within the context every adapter layer of `model` is replaced by a plain layer of its base layer's type
    holding the base weight plus the update for `task_id` (`AdapterLinear.merged_linear`; None for a task-agnostic
    method), so that a forward runs at the base model's speed; on exit the adapter layers are put back. The merged
    layers are copies: the model's own parameters are never written, so they and the adapter are bit-identical
    afterwards (an in-place merge and unmerge would not be: W + ΔW − ΔW rounds). It costs one extra copy of the
    adapted weights. Every merged layer is built before any is swapped in, so a layer that cannot merge raises with
    the model unchanged; a DeepSpeed ZeRO-3 model (partitioned weights) is refused."""
    get_adapter_config(model)  # raises for a model without adapters
    if any(hasattr(param, "ds_id") for param in model.parameters()):
        raise ValueError(
            f"{type(model).__name__} has DeepSpeed ZeRO-3 partitioned weights, which cannot be merged; "
            "generate with merged=False"
        )
    layers = list(adapter_layers(model))
    merged = [layer.merged_linear(task_id) for _, layer in layers]
    places = [(model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]) for name, _ in layers]
    try:
        for (parent, child), layer in zip(places, merged, strict=True):
            setattr(parent, child, layer.train(False))
        yield
    finally:
        for (parent, child), (_, layer) in zip(places, layers, strict=True):
            setattr(parent, child, layer)


def _task_context(model: nn.Module, task_ids: list[int] | None):
    """`use_tasks` for a model with adapters; a model without adapters (the zero-shot base) needs no ids."""
    if task_ids is None or getattr(model, "_mtllora", None) is None:
        return contextlib.nullcontext()
    return use_tasks(model, torch.tensor(task_ids))


def _rank_batches(lengths: Sequence[int], batch_size: int, synced_gpus: bool) -> tuple[list[list[int]], int]:
    """Returns (this rank's batches of input indices, how many of them are real): inputs sorted longest first (so
    a batch wastes little on padding), every world-th one for this rank, cut into batches. Under `synced_gpus` the
    list is padded with repeats of the last batch up to the busiest rank's count (outputs of those are dropped)."""
    rank, world = _rank_and_world()
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[rank::world]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    real = len(batches)
    if synced_gpus and world > 1:
        # Every rank runs as many generate() calls as the busiest one; the extra calls' outputs are dropped.
        most = torch.tensor([real])
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        batches += [batches[-1] if batches else [0]] * (int(most) - real)
    return batches, real


def _show_batch_tasks(bar: tqdm, task_ids: Sequence[int] | None, batch: Sequence[int]) -> None:
    """Names the task ids of the batch being generated beside the bar (tasks share batches, longest prompts first)."""
    if task_ids is not None:
        ids = sorted({int(task_ids[i]) for i in batch})
        bar.set_postfix_str(f"task{'s' if len(ids) > 1 else ''} {','.join(map(str, ids))}", refresh=False)


def _gather_outputs(outputs: dict[int, str], count: int) -> list[str]:
    """Returns the `count` outputs in input order, after gathering every rank's share."""
    _, world = _rank_and_world()
    if world > 1:
        shards: list[dict[int, str]] = [{} for _ in range(world)]
        dist.all_gather_object(shards, outputs)
        outputs = {i: text for shard in shards for i, text in shard.items()}
    return [outputs[i] for i in range(count)]


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    task_ids: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    synced_gpus: bool = False,
    merged: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Returns the decoded continuation of every prompt (special tokens skipped), in the prompts' order.

    Greedy when `num_beams` is 1, else deterministic beam search; `task_ids[i]` is prompt i's task (None: a
    task-agnostic model). Under several ranks each generates its share and all ranks return every output;
    `synced_gpus=True` is required under DeepSpeed ZeRO-3, where every rank must join every forward. `merged=True`
    generates each task's prompts apart with its update merged into the weights (`merged_weights`): no adapter in
    the decode loop; not under ZeRO-3."""
    if task_ids is not None and len(task_ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(task_ids)} task ids; pass one task id per prompt")
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    loop = (model, tokenizer, prompts, task_ids, lengths, batch_size, max_new_tokens, num_beams, synced_gpus, desc)
    return _generate_batches(*loop, merged=merged)


def _generate_batches(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    task_ids: Sequence[int] | None,
    lengths: Sequence[int],
    batch_size: int,
    max_new_tokens: int,
    num_beams: int,
    synced_gpus: bool,
    desc: str,
    *,
    merged: bool = False,
    encoder_decoder: bool = False,
    order_by_task: bool = False,
    batch_inputs: Callable[[list[int]], Mapping[str, torch.Tensor]] | None = None,
) -> list[str]:
    """The loop of `generate` and `generate_image_text`: this rank's batches (`_rank_batches` of the inputs'
    `lengths`), each generated under its rows' task ids in eval mode, then every rank's outputs in input order.

    `merged`: the inputs of each task (all of them, for a task-agnostic method) are batched apart and generated with
    that task's update merged (`merged_weights`); a model without adapters has nothing to merge. A decoder-only model
    gets left-padded prompts and returns them before the continuation (cut off here); an `encoder_decoder` one gets
    them right-padded and returns the answer alone. `order_by_task` orders each batch's rows by task (runs of one
    task for MTL-LoRA); `batch_inputs(batch)` gives a batch's extra model inputs (the visual tokens)."""
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad token; set one (e.g. the unk or eos token)")
    if merged and synced_gpus:
        raise ValueError(
            "merged=True with synced_gpus=True: DeepSpeed ZeRO-3 partitions the weights, which cannot be merged; "
            "pass merged=False"
        )
    rank, _ = _rank_and_world()
    groups = _merge_groups(model, task_ids, len(prompts)) if merged else [(None, list(range(len(prompts))))]
    plan = []  # (task to merge, this rank's batches of input indices, how many of them are real)
    for task, members in groups:
        batches, real = _rank_batches([lengths[i] for i in members], batch_size, synced_gpus)
        plan.append((task, [[members[j] for j in batch] for batch in batches], real))
    merging = merged and getattr(model, "_mtllora", None) is not None
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "right" if encoder_decoder else "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: dict[int, str] = {}
    total = sum(len(batches) for _, batches, _ in plan)
    bar = tqdm(total=total, desc=desc, disable=rank != 0 or not total)
    try:
        for task, batches, real in plan:
            with merged_weights(model, task) if merging else contextlib.nullcontext():
                for index, batch in enumerate(batches):
                    _show_batch_tasks(bar, task_ids, batch)
                    if order_by_task and task_ids is not None:
                        batch = sorted(batch, key=lambda i: int(task_ids[i]))  # stable: runs of one task (MTL-LoRA)
                    encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True).to(device)
                    extra = {} if batch_inputs is None else batch_inputs(batch)
                    ids = None if task_ids is None else [int(task_ids[i]) for i in batch]
                    with _task_context(model, ids):  # merged too: it checks the ids against the task count
                        generated = model.generate(
                            **encoded,
                            **{key: value.to(device) for key, value in extra.items()},
                            max_new_tokens=max_new_tokens,
                            do_sample=False,
                            num_beams=num_beams,
                            pad_token_id=tokenizer.pad_token_id,
                            synced_gpus=synced_gpus,
                        )
                    if not encoder_decoder:
                        generated = generated[:, encoded["input_ids"].shape[1] :]
                    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
                    if index < real:
                        outputs.update(zip(batch, texts, strict=True))
                    bar.update()
    finally:
        bar.close()
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return _gather_outputs(outputs, len(prompts))


def _merge_groups(model: nn.Module, task_ids: Sequence[int] | None, count: int) -> list[tuple[int | None, list[int]]]:
    """Returns [(task id to merge, its input indices)] for merged generation: one group per task id (ascending) for
    a task-aware method, one group of every input (task None) for a task-agnostic one or a model without adapters."""
    state = getattr(model, "_mtllora", None)
    if state is None or state.config.num_tasks is None:
        return [(None, list(range(count)))]
    if task_ids is None:
        raise ValueError(f"merged generation with {state.config.method} merges one task at a time; pass task_ids")
    groups: dict[int, list[int]] = {}
    for index, task_id in enumerate(task_ids):
        groups.setdefault(int(task_id), []).append(index)
    return sorted(groups.items())


def pad_visual_tokens(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Returns a batch of per-example visual inputs ({vis_feats [V_i, D], vis_pos [V_i, 4], img_order_ids [V_i]?}):
    each key zero-padded along the token axis to the longest V_i and stacked, plus `vis_attention_mask` [n, V] when
    the V_i differ (NLVR2's two images next to one). Training batches and generation batches are built alike."""
    counts = [len(example["vis_feats"]) for example in examples]
    longest = max(counts)
    batch = {
        key: torch.stack(
            [nn.functional.pad(e[key], (0, 0) * (e[key].dim() - 1) + (0, longest - len(e[key]))) for e in examples]
        )
        for key in examples[0]
    }
    if min(counts) < longest:
        batch["vis_attention_mask"] = (torch.arange(longest) < torch.tensor(counts)[:, None]).long()
    return batch


@torch.no_grad()
def generate_image_text(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    vis_feats: Sequence[torch.Tensor],
    vis_pos: Sequence[torch.Tensor],
    task_ids: Sequence[int] | None = None,
    *,
    img_order_ids: Sequence[torch.Tensor] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    synced_gpus: bool = False,
    merged: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Returns the decoded answer of every (prompt, image) example (special tokens skipped), in input order, from an
    encoder-decoder model with visual inputs (`mtllora.vl_bart.VLBartForConditionalGeneration`).

    Example i is `prompts[i]` with its visual tokens `vis_feats[i]` [V_i, feat_dim], `vis_pos[i]` [V_i, 4] and, for
    several images (NLVR2), `img_order_ids[i]` [V_i]. Examples are sorted by encoder length (text + V_i) and
    generated in batches: text right-padded (encoder-decoder models pad right), visual tokens zero-padded with a
    `vis_attention_mask` when the V_i of a batch differ. Within a batch the rows are ordered by task, so MTL-LoRA
    adds each task's up-projection with one GEMM; every row runs under its own task id (`use_tasks`), its beams
    included. Greedy when `num_beams` is 1, else deterministic beam search. Ranks, `synced_gpus` and `merged` as
    `generate`."""
    count = len(prompts)
    for name, values in (("vis_feats", vis_feats), ("vis_pos", vis_pos), ("task_ids", task_ids),
                         ("img_order_ids", img_order_ids)):  # fmt: skip
        if values is not None and len(values) != count:
            raise ValueError(f"{count} prompts but {len(values)} {name}; pass one per prompt")
    text_lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    lengths = [n + feats.shape[0] for n, feats in zip(text_lengths, vis_feats, strict=True)]

    def visual_tokens(batch: list[int]) -> dict[str, torch.Tensor]:
        return pad_visual_tokens(
            [
                {"vis_feats": vis_feats[i], "vis_pos": vis_pos[i]}
                | ({} if img_order_ids is None else {"img_order_ids": img_order_ids[i]})
                for i in batch
            ]
        )

    loop = (model, tokenizer, prompts, task_ids, lengths, batch_size, max_new_tokens, num_beams, synced_gpus, desc)
    return _generate_batches(*loop, merged=merged, encoder_decoder=True, order_by_task=True, batch_inputs=visual_tokens)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Writes one JSON object per line (UTF-8, atomically) and returns the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
