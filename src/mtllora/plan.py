"""`python -m mtllora.plan`: what a run will cost, printed before anyone pays for GPU hours.

    python -m mtllora.plan experiment=commonsense method=mtl_lora [--gpu h100] [--utilization 0.4] [--gpus 8]

Composes the run's config as `mtllora.train` does, runs the preflight (`mtllora.preflight.check`: hub access and the
benchmark's `check_inputs`), then reads the REAL training set through the benchmark (its prompts, truncation and task
mixing) and prints examples, tokens and optimizer steps; the model's parameters (the benchmark's own model with the
method's adapters, built on the meta device from the model's config); memory per GPU; and hours for 1 and N GPUs.
Several runs of one profile (`--run "method=lora" --run "method=dora ..."`, `--seeds 3`) get a total. Exit status 1 when
the preflight fails (the plan still prints what it could work out), so scripts can stop there.

Stated assumptions (also printed):
- Tokens: counted with the model's tokenizer when it loads (offline cache or local path), else estimated as one
  token per `CHARS_PER_TOKEN` characters of each word (labelled ESTIMATED). Compute counts the tokens of each
  micro-batch padded to its longest example (random batches, as training draws them).
- Training FLOPs ≈ (2 forward + 2 backward through the activations [+ 2 recompute with gradient checkpointing]) ×
  parameters × padded tokens per epoch × epochs: frozen weights need no weight gradients; attention score FLOPs
  are left out. Evaluation: a forward over each example (2 × parameters per token, × beams for generated tokens),
  or, for generation, the time to read the weights once per decoded step where that is longer (decode is bound by
  memory bandwidth).
- Memory per GPU: frozen weights in the model's dtype (ZeRO-3 partitions them); trained parameters in their dtype,
  their gradients (partitioned from ZeRO-2), AdamW's two fp32 moments and an fp32 master copy for non-fp32
  parameters (partitioned from ZeRO-1); activations per layer s·b·h·(34 + 5·a·s/h) bytes at 16 bits (Korthikanti
  et al. 2022, "Reducing Activation Recomputation", eq. 2; ×2 at 32 bits), with checkpointing each layer's 16-bit
  input (2·s·b·h) plus one layer's full activations; fp32 logits and their gradient (2 × 4·s·b·vocab). CUDA context,
  allocator fragmentation and communication buckets are not included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import datasets
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .adapters import apply_adapters, count_parameters
from .preflight import check as check_inputs_and_access
from .training_args import batch_layout

CHARS_PER_TOKEN = 4.0


@dataclasses.dataclass(frozen=True)
class Gpu:
    """Dense (no sparsity) peak throughput in FLOP/s, memory bandwidth in bytes/s and memory in GiB."""

    name: str
    bf16_flops: float
    fp32_flops: float
    bandwidth: float
    memory_gib: float


# Datasheet numbers of the SXM parts; fp32 is the non-tensor-core rate (PyTorch leaves TF32 off by default).
GPUS = {
    "h100": Gpu("H100 SXM", 989e12, 67e12, 3.35e12, 80),
    "h200": Gpu("H200 SXM", 989e12, 67e12, 4.8e12, 141),
    "a100": Gpu("A100 SXM 80GB", 312e12, 19.5e12, 2.039e12, 80),
}


@dataclasses.dataclass
class DataStats:
    """Training and evaluation sizes of one run, from the benchmark's real data."""

    examples: int
    tokens: int  # real tokens per epoch
    padded_tokens: int  # tokens processed per epoch: each micro-batch padded to its longest example
    longest: int
    eval_examples: int
    eval_input_tokens: int
    eval_generated_tokens: int  # per beam; 0 when evaluation is one forward pass (classification)
    tokenizer: str  # what counted the tokens


@dataclasses.dataclass
class ModelStats:
    """Parameter counts (in bytes where it matters) of the run's model with the method's adapters."""

    total: int
    trainable: int
    frozen_bytes: int
    trainable_bytes: int
    trainable_non_fp32: int  # trained parameters whose optimizer keeps an fp32 master copy
    hidden: int
    layers: int
    heads: int
    vocab: int  # 0 for models without an LM head (classification)
    source: str


@dataclasses.dataclass
class Memory:
    """Bytes per GPU."""

    frozen: float
    trained: float  # weights + gradients + optimizer state
    activations: float
    activations_checkpointed: float
    logits: float

    def total(self, checkpointing: bool) -> float:
        acts = self.activations_checkpointed if checkpointing else self.activations
        return self.frozen + self.trained + acts + self.logits


def compose(overrides: Sequence[str]) -> DictConfig:
    """Returns the config `python -m mtllora.train <overrides>` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from .configs import CONFIG_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, "paths.output_dir=plan"])


def steps_per_epoch(examples: int, per_device: int, accumulation: int, world: int) -> int:
    """Optimizer steps per epoch as HF Trainer counts them: each rank's share of the examples in micro-batches,
    then one step per `accumulation` micro-batches (a partial last group still steps)."""
    micro_batches = math.ceil(math.ceil(examples / world) / per_device)
    return max(1, math.ceil(micro_batches / accumulation))


def padded_tokens(lengths: Sequence[int], micro_batch: int, seed: int = 0) -> int:
    """Returns the tokens processed over random micro-batches of `lengths`, each padded to its longest example."""
    order = np.random.default_rng(seed).permutation(np.asarray(lengths, dtype=np.int64))
    return int(sum(chunk.max() * len(chunk) for chunk in np.array_split(order, math.ceil(len(order) / micro_batch))))


def estimating_tokenizer(config: Any) -> Any:
    """A fast tokenizer that makes one token of every CHARS_PER_TOKEN characters of each word (at least one per
    word; whitespace is free), with BOS, EOS, PAD and UNK ids, so that the benchmark's own pipeline can count tokens
    when the model's tokenizer is not available."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    chunk = Regex(rf".{{1,{int(CHARS_PER_TOKEN)}}}")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(chunk, behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        # Part of the benchmarks' tokenisation cache key: a change of the rule above must change it.
        name_or_path=f"estimate-one-token-per-{CHARS_PER_TOKEN:g}-chars-of-each-word",
    )


def model_config(cfg: DictConfig) -> tuple[Any, str]:
    """Returns (the model's transformers config, where it came from): AutoConfig from the hub id or local path,
    else the `shapes` stored in the model's yaml."""
    from transformers import AutoConfig

    m = cfg.model
    try:
        return AutoConfig.from_pretrained(m.name_or_path, gguf_file=m.get("gguf_file")), f"config of {m.name_or_path}"
    except (OSError, ValueError) as err:
        shapes = m.get("shapes")
        if shapes is None:
            raise ValueError(
                f"cannot read the config of model {m.name!r} ({m.name_or_path}: {err}) and configs/model has no "
                f"`shapes:` for it to fall back to"
            ) from err
        shapes = OmegaConf.to_container(shapes, resolve=True)
        return AutoConfig.for_model(**shapes), f"shapes stored in the model's yaml ({m.name_or_path} unreachable)"


@contextlib.contextmanager
def weightless_loading(config: Any, tokenizer_note: list[str]) -> Iterator[None]:
    """While active, `from_pretrained` of models builds them from `config` on the meta device (no weights read),
    AutoConfig returns `config`, and AutoTokenizer falls back to `estimating_tokenizer` when the real one cannot be
    loaded; `tokenizer_note` receives what was used. So the plan counts exactly the model the benchmark builds."""
    from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

    real_tokenizer = AutoTokenizer.from_pretrained

    def model_from_config(cls, name_or_path, *args, dtype=None, gguf_file=None, config=None, **kwargs):
        # The Auto classes resolve the model class from AutoConfig (patched below) and end here.
        with torch.device("meta"):
            return cls._from_config(chosen, dtype=dtype, **{k: v for k, v in kwargs.items() if k == "feat_dim"})

    def config_from_pretrained(name_or_path, *args, return_unused_kwargs=False, **kwargs):
        return (chosen, {}) if return_unused_kwargs else chosen

    chosen = config

    def tokenizer(name_or_path, *args, **kwargs):
        try:
            loaded = real_tokenizer(name_or_path, *args, **kwargs)
            tokenizer_note.append(f"the model's tokenizer ({name_or_path})")
            return loaded
        except (OSError, ValueError):
            tokenizer_note.append(
                f"ESTIMATED, one per {CHARS_PER_TOKEN:g} characters of each word ({name_or_path} unavailable)"
            )
            return estimating_tokenizer(config)

    with (
        mock.patch.object(PreTrainedModel, "from_pretrained", classmethod(model_from_config)),
        mock.patch.object(AutoConfig, "from_pretrained", config_from_pretrained),
        mock.patch.object(AutoTokenizer, "from_pretrained", tokenizer),
    ):
        yield


def model_stats(model: torch.nn.Module, config: Any, source: str) -> ModelStats:
    """Counts the parameters of a (meta-device) model and reads the shapes the activation formula needs."""
    count = count_parameters(model)
    frozen_bytes = trainable_bytes = trainable_non_fp32 = 0
    for param in model.parameters():
        size = param.numel() * param.element_size()
        if param.requires_grad:
            trainable_bytes += size
            trainable_non_fp32 += param.numel() if param.dtype != torch.float32 else 0
        else:
            frozen_bytes += size
    layers = config.num_hidden_layers + (getattr(config, "decoder_layers", 0) if config.is_encoder_decoder else 0)
    output_embeddings = getattr(model, "get_output_embeddings", lambda: None)()  # an LM head (often tied)
    return ModelStats(
        total=count.total,
        trainable=count.trainable,
        frozen_bytes=frozen_bytes,
        trainable_bytes=trainable_bytes,
        trainable_non_fp32=trainable_non_fp32,
        hidden=config.hidden_size,
        layers=layers,
        heads=config.num_attention_heads,
        vocab=config.vocab_size if output_embeddings is not None else 0,
        source=source,
    )


def memory(stats: ModelStats, world: int, zero_stage: int, micro_batch: int, seq: int, activation_bytes: int) -> Memory:
    """Bytes per GPU (see the module docstring for the formulas)."""
    trained_fp32_states = stats.trainable * 8 + stats.trainable_non_fp32 * 4  # AdamW m, v (+ fp32 master)
    grads = stats.trainable_bytes
    trained = (
        stats.trainable_bytes / (world if zero_stage >= 3 else 1)
        + grads / (world if zero_stage >= 2 else 1)
        + trained_fp32_states / (world if zero_stage >= 1 else 1)
    )
    s, b, h, a = seq, micro_batch, stats.hidden, stats.heads
    scale = activation_bytes / 2  # the formula counts 16-bit activations
    per_layer = s * b * h * (34 + 5 * a * s / h) * scale
    return Memory(
        frozen=stats.frozen_bytes / (world if zero_stage >= 3 else 1),
        trained=trained,
        activations=stats.layers * per_layer,
        activations_checkpointed=stats.layers * 2 * s * b * h * scale + per_layer,
        logits=2 * 4 * s * b * stats.vocab,
    )


def train_flops(params: int, padded_tokens_per_epoch: int, epochs: float, checkpointing: bool) -> float:
    """(2 forward + 2 backward through activations [+ 2 recompute]) × parameters × tokens × epochs."""
    return (6 if checkpointing else 4) * params * padded_tokens_per_epoch * epochs


def eval_seconds(
    stats: ModelStats, data: DataStats, gpu: Gpu, utilization: float, bf16: bool, cfg: DictConfig
) -> float:
    """Evaluation time on one GPU: the FLOPs at the stated utilisation, or for generation the weight reads of every
    decoded step (batches of benchmark.eval_batch_size) where that is longer."""
    beams = cfg.benchmark.get("num_beams") or 1
    flops = 2 * stats.total * (data.eval_input_tokens + data.eval_generated_tokens * beams)
    seconds = flops / ((gpu.bf16_flops if bf16 else gpu.fp32_flops) * utilization)
    if data.eval_generated_tokens:
        batch = cfg.benchmark.get("eval_batch_size") or cfg.trainer.per_device_eval_batch_size
        steps = math.ceil(data.eval_examples / batch) * data.eval_generated_tokens / max(data.eval_examples, 1)
        seconds = max(seconds, steps * (stats.frozen_bytes + stats.trainable_bytes) / gpu.bandwidth)
    return seconds


def data_stats(
    benchmark: Any, tokenizer: Any, tokenizer_note: str, micro_batch: int, seed: int, encoder_decoder: bool
) -> DataStats:
    """Reads the benchmark's real training set (tokenised as training tokenises it) and its evaluation inputs. For
    an encoder-decoder a training example's tokens are the mean of its encoder tokens (text, and visual tokens:
    `n_boxes` per image) and its decoder tokens: each stack holds about half of the parameters."""
    train = benchmark.train_dataset(tokenizer)
    lengths = [len(ids) for ids in train["input_ids"]]
    if encoder_decoder:
        visual = [0] * len(lengths)
        if "image_ids" in train.column_names:
            visual = [len(ids) * (getattr(benchmark, "n_boxes", None) or 0) for ids in train["image_ids"]]
        lengths = [
            math.ceil((n + v + len(labels)) / 2) for n, v, labels in zip(lengths, visual, train["labels"], strict=True)
        ]
    eval_examples, eval_inputs, generated = _eval_inputs(benchmark, tokenizer)
    return DataStats(
        examples=len(lengths),
        tokens=int(sum(lengths)),
        padded_tokens=padded_tokens(lengths, micro_batch, seed),
        longest=max(lengths),
        eval_examples=eval_examples,
        eval_input_tokens=eval_inputs,
        eval_generated_tokens=generated * eval_examples,
        tokenizer=tokenizer_note,
    )


def _eval_inputs(benchmark: Any, tokenizer: Any) -> tuple[int, int, int]:
    """Returns (evaluation examples, their input tokens, new tokens generated per example; 0 = classification)."""
    if hasattr(benchmark, "eval_datasets"):  # classification: one forward over each dev example
        sets = [dataset for _, dataset in benchmark.eval_datasets(tokenizer).values()]
        return sum(len(d) for d in sets), sum(len(ids) for d in sets for ids in d["input_ids"]), 0
    if hasattr(benchmark, "test_records"):  # instruction prompts, answered by generation
        prompts = [benchmark.prompt(r) for task in benchmark.tasks for r in benchmark.test_records(task)]
        tokens = sum(len(ids) for ids in tokenizer(prompts)["input_ids"]) if prompts else 0
        return len(prompts), tokens, benchmark.max_new_tokens
    records = [
        r
        for task in benchmark.tasks
        for r in benchmark.records(task, benchmark.eval_split, benchmark.max_eval_samples, seed=0)
    ]
    from .benchmarks.image_text_data import input_text

    texts = [input_text(r, benchmark.use_task_prompts) for r in records]
    tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"]) if texts else 0
    generated = sum(benchmark.max_new_tokens[r.task] for r in records)  # per task (captions longer than answers)
    return len(records), tokens, round(generated / max(len(records), 1))


@dataclasses.dataclass
class RunPlan:
    """Everything the plan prints for one run."""

    name: str
    cfg: DictConfig
    model: ModelStats | None
    data: DataStats | None
    problems: list[str]


def backbone_stats(cfg: DictConfig, config: Any, source: str) -> ModelStats:
    """The model without its benchmark (which needs the data): the config's causal-LM, seq2seq or bare model with
    the method's adapters; the benchmark's own additions (task heads, a visual embedding) are not counted."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from .adapters import AdapterConfig

    if config.is_encoder_decoder:
        auto_class = AutoModelForSeq2SeqLM
    elif any(a.endswith("ForCausalLM") for a in config.architectures or ()):
        auto_class = AutoModelForCausalLM
    else:  # an encoder (BERT-like models have a causal-LM class too: the checkpoint's architecture decides)
        auto_class = AutoModel
    with torch.device("meta"):
        model = auto_class.from_config(config, dtype=getattr(torch, cfg.model.dtype))
    model.requires_grad_(False)
    if cfg.method.adapter is not None:
        adapter = OmegaConf.to_container(cfg.method.adapter, resolve=True)
        names = [name for name, _ in model.named_parameters()]
        # The benchmark's patterns that name parts of the backbone (not, e.g., the visual embedding it adds).
        found = [p for p in cfg.benchmark.get("trainable") or [] if any(re.search(p, name) for name in names)]
        adapter["trainable"] = [*found, *adapter.get("trainable", [])]
        apply_adapters(model, AdapterConfig.from_dict(adapter))
    note = f"{source}; backbone only ({auto_class.__name__}: no task heads or other parts the benchmark adds)"
    return model_stats(model, config, note)


def plan_run(overrides: Sequence[str], check: bool = True) -> RunPlan:
    """Composes the run, runs the preflight, builds the model on the meta device and reads the data; what cannot
    be worked out is recorded in `problems` (the preflight's failure first) instead of raised."""
    from .configs import instantiate_node
    from .models import ModelConfig
    from .train import method_adapter_config

    cfg = compose(overrides)
    problems: list[str] = []
    name = f"{cfg.benchmark.name} {cfg.method.name} {cfg.model.name} s{cfg.seed}"
    if check:
        try:
            check_inputs_and_access(cfg)
        except Exception as err:  # any preflight failure is reported, then the plan goes on
            problems.append(f"preflight failed: {type(err).__name__}: {err}")
    try:
        config, source = model_config(cfg)
    except ValueError as err:
        return RunPlan(name, cfg, None, None, [*problems, str(err)])
    model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
    notes: list[str] = []
    with weightless_loading(config, notes):
        try:
            benchmark = instantiate_node(cfg.benchmark)
            model, tokenizer = benchmark.build_model(model_cfg)
        except Exception as err:  # no data, no benchmark: the backbone alone still gives memory and cost per token
            problems.append(f"the benchmark cannot be built: {type(err).__name__}: {err}")
            return RunPlan(name, cfg, backbone_stats(cfg, config, source), None, problems)
        adapter_config = method_adapter_config(cfg, benchmark)
        if adapter_config is not None:
            apply_adapters(model, adapter_config)
        else:
            model.requires_grad_(False)
        stats = model_stats(model, config, source)
        data = None
        try:
            data = data_stats(
                benchmark,
                tokenizer,
                notes[-1],
                cfg.trainer.per_device_train_batch_size,
                cfg.seed,
                bool(config.is_encoder_decoder),
            )
        except Exception as err:
            problems.append(f"the data cannot be read: {type(err).__name__}: {err}")
    return RunPlan(name, cfg, stats, data, problems)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def uses_bf16(cfg: DictConfig) -> bool:
    """Whether the run computes in bf16 on a GPU (trainer.bf16 true or auto: every listed GPU supports it)."""
    return cfg.trainer.bf16 in (True, "auto")


def run_hours(run: RunPlan, gpu: Gpu, utilization: float, world: int) -> dict[str, float] | None:
    """Returns {epochs, steps, train_hours, eval_hours} of a run on `world` GPUs, or None without its data."""
    if run.data is None or run.model is None:
        return None
    cfg, t = run.cfg, run.cfg.trainer
    per_device, accumulation = batch_layout(cfg.trainer, world)
    per_epoch = steps_per_epoch(run.data.examples, per_device, accumulation, world)
    epochs = t.max_steps / per_epoch if t.max_steps > 0 else float(t.num_train_epochs)
    bf16 = uses_bf16(cfg)
    trains = cfg.method.adapter is not None
    flops = (
        train_flops(run.model.total, run.data.padded_tokens, epochs, bool(t.gradient_checkpointing)) if trains else 0
    )
    peak = gpu.bf16_flops if bf16 else gpu.fp32_flops
    return {
        "batch": per_device * accumulation * world,
        "per_device": per_device,
        "accumulation": accumulation,
        "steps_per_epoch": per_epoch,
        "steps": t.max_steps if t.max_steps > 0 else per_epoch * t.num_train_epochs,
        "epochs": epochs,
        "train_flops": flops,
        "train_hours": flops / (peak * utilization * world) / 3600,
        "eval_hours": eval_seconds(run.model, run.data, gpu, utilization, bf16, cfg) / world / 3600,
    }


def format_run(run: RunPlan, gpu: Gpu, utilization: float, gpu_counts: Sequence[int]) -> str:
    """The plan of one run as text."""
    cfg, t = run.cfg, run.cfg.trainer
    lines = [f"== {run.name}  (profile {cfg.profile}, method {cfg.method.label})"]
    lines += [f"   ! {problem}" for problem in run.problems]
    m, d = run.model, run.data
    if m is not None:
        lines.append(
            f"   model        {m.total:,} parameters, {m.trainable:,} trained ({100 * m.trainable / m.total:.3f} %); "
            f"{m.layers} layers, hidden {m.hidden}, {m.heads} heads; from the {m.source}"
        )
    if d is not None:
        lines.append(
            f"   train data   {d.examples:,} examples, {d.tokens:,} tokens per epoch (longest {d.longest}; "
            f"{d.padded_tokens:,} processed, padded per micro-batch of {t.per_device_train_batch_size}); "
            f"tokens: {d.tokenizer}"
        )
        generated = f", {d.eval_generated_tokens:,} generated at most" if d.eval_generated_tokens else ""
        lines.append(f"   eval data    {d.eval_examples:,} examples, {d.eval_input_tokens:,} input tokens{generated}")
    if m is None:
        return "\n".join(lines)
    zero = OmegaConf.select(cfg, "deepspeed.config.zero_optimization.stage", default=0) if cfg.deepspeed.config else 0
    seq = d.longest if d is not None else cfg.model.max_length
    act_bytes = 2 if uses_bf16(cfg) else torch.tensor([], dtype=getattr(torch, cfg.model.dtype)).element_size()
    ckpt = bool(t.gradient_checkpointing)
    for world in gpu_counts:
        try:
            per_device, _ = batch_layout(cfg.trainer, world)
        except ValueError as err:
            lines.append(f"   {world} GPU(s)     ! {err}")
            continue
        mem = memory(m, world, zero, per_device, seq, act_bytes)
        lines.append(
            f"   memory/GPU   {world} GPU(s), ZeRO-{zero}, micro-batch {per_device} × {seq} tokens: weights "
            f"{_gib(mem.frozen)} + trained (weights, grads, AdamW) {_gib(mem.trained)} + logits {_gib(mem.logits)} + "
            f"activations {_gib(mem.activations_checkpointed)} checkpointed / {_gib(mem.activations)} not = "
            f"{_gib(mem.total(True))} / {_gib(mem.total(False))} (this run: {'with' if ckpt else 'without'} "
            f"checkpointing; {gpu.name}: {gpu.memory_gib:g} GiB)"
        )
        hours = run_hours(run, gpu, utilization, world)
        if hours is not None and cfg.method.adapter is None:
            lines.append(f"   time         {world} × {gpu.name}: no training; eval {hours['eval_hours']:.2f} h")
        elif hours is not None:
            lines.append(
                f"   time         {world} × {gpu.name}: batch {hours['batch']} ({hours['per_device']} per GPU × "
                f"{hours['accumulation']} accumulation), {hours['steps_per_epoch']:,} steps/epoch, "
                f"{hours['steps']:,} steps ({hours['epochs']:g} epochs), {hours['train_flops']:.3g} train FLOPs: "
                f"train {hours['train_hours']:.2f} h + eval {hours['eval_hours']:.2f} h"
            )
    if d is None:
        per_token = (6 if ckpt else 4) * m.total
        gpu_seconds = per_token * 1e6 / ((gpu.bf16_flops if uses_bf16(cfg) else gpu.fp32_flops) * utilization)
        lines.append(
            f"   time         without the data: {per_token:.3g} train FLOPs per token, i.e. {gpu_seconds:.3g} "
            f"{gpu.name}-seconds per million training tokens"
        )
    return "\n".join(lines)


def assumptions(gpu: Gpu, utilization: float) -> str:
    """The stated basis of the numbers."""
    return (
        f"Basis: {gpu.name} dense peak {gpu.bf16_flops / 1e12:g} TFLOP/s bf16 ({gpu.fp32_flops / 1e12:g} fp32), "
        f"{gpu.bandwidth / 1e12:g} TB/s, at {100 * utilization:g} % utilisation; train FLOPs = (2 fwd + 2 bwd "
        f"[+2 recompute]) × params × padded tokens × epochs; eval: 2 × params per token, or weight reads per decoded "
        f"step; activations s·b·h·(34 + 5as/h) B per layer at 16 bit (Korthikanti et al. 2022), checkpointed: 2sbh "
        f"per layer + one layer; no CUDA context or fragmentation. See `python -m mtllora.plan --help`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns 1 when a run's preflight failed or its data or model could not be read."""
    parser = argparse.ArgumentParser(
        prog="python -m mtllora.plan",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for mtllora.train (experiment=..., ...)")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--utilization", type=float, default=0.4, help="fraction of the dense peak reached")
    parser.add_argument("--gpus", type=int, default=8, help="the multi-GPU count shown beside 1 GPU")
    parser.add_argument(
        "--run", action="append", default=[], help="extra overrides of one run of several (repeat it); default: one"
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per run, for the total")
    parser.add_argument("--skip-preflight", action="store_true", help="plan without the hub/data checks")
    args = parser.parse_intermixed_args(argv)
    datasets.disable_progress_bars()  # the plan's output is the text below
    gpu = GPUS[args.gpu]
    counts = sorted({1, args.gpus})
    runs = [
        plan_run([*args.overrides, *shlex.split(extra)], check=not args.skip_preflight) for extra in args.run or [""]
    ]
    print(assumptions(gpu, args.utilization))
    for run in runs:
        print(format_run(run, gpu, args.utilization, counts))
    for world in counts:
        hours = []
        for run in runs:
            try:
                hours.append(run_hours(run, gpu, args.utilization, world))
            except ValueError:  # no batch split on this many GPUs: its run block says why
                hours.append(None)
        known = [h["train_hours"] + h["eval_hours"] for h in hours if h is not None]
        missing = f" ({len(hours) - len(known)} run(s) without data left out)" if len(known) < len(hours) else ""
        print(
            f"TOTAL {len(runs)} run(s) × {args.seeds} seed(s) on {world} × {gpu.name}: "
            f"{args.seeds * sum(known):.1f} h{missing}"
        )
    failed = [run.name for run in runs if run.problems]
    if failed:
        print(f"PLAN INCOMPLETE: {len(failed)} run(s) have problems (marked !): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
