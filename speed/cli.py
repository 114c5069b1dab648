"""`make bench` / `python -m speed`: measures every adapter method against its peers in one run and writes
`results/bench/<host>-<date>.{json,md,png}`."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

import mtllora

from . import adapterhub, engine, report
from .harness import measure, peak_step_memory
from .suites import (
    ALPHA,
    FULL,
    NUM_TASKS,
    NUM_UP,
    QUICK,
    RANK,
    TEMPERATURE,
    Scale,
    Suite,
    inference_rows,
    layer_workload,
    minilm_path,
    model_batches,
    model_workloads,
    training_rows,
    vl_training_rows,
    vl_workloads,
)

TIMING_METHOD = (
    "**Timing.** Each row is one step (training: forward, backward, gradients dropped, no optimizer step; "
    "inference: one forward under `torch.inference_mode`). After a first call (profiled for memory), every repeat "
    "times every row of a suite once, in an order rotated by one per repeat, so drift hits all rows alike; a row's "
    "time is the median over repeats (at least 7, more for cheap suites), fast rows running several steps per "
    "sample. `timeit` disables the garbage collector while timing; the thread count is fixed; a sample during which "
    "other processes took CPU time that our threads needed (per /proc/stat) is taken again, at most twice (counts in "
    "the JSON). The input of the adapted part requires grad in every training row (layer: x; models: the "
    "embeddings' output), so the frozen base does the same backward work and is the floor. Overhead = median − "
    "base median. Adapters: r=8, α=16, no dropout; MTL-LoRA n=3, T=8, τ=0.1; mixed-task batches (task ids 0..7 over "
    "the samples); model level adapts q, k, v and the feed-forward input and output projections of every layer "
    "(the widest set AdapterHub supports: it has no LoRA on the attention output projection or Llama's gate_proj). "
    "The VL suites use the official VL-BART recipe's adapters (r=64, α=16; MTL-LoRA n=2, T=4, τ=0.8; q and v "
    "projections of every encoder, decoder and cross attention) on image-text shapes, with each batch ordered by "
    "task (T contiguous blocks, as a loader ordering its batches by task gives; the official one gives one task per "
    "batch), plus two MTL-LoRA rows with the tasks interleaved: sorted by task inside the layer (the default) and "
    "on the gathered path (`sort_tasks: false`)."
)
MEMORY_METHOD = (
    "**Memory.** Peak bytes torch allocated during a row's first step above those allocated before it (saved "
    "activations, temporaries, gradients, one-off caches; not the weights or inputs). On CPU torch keeps no peak "
    "counter: the step runs under `torch.profiler` with `profile_memory=True` and the peak is the running sum of its "
    "CPU allocation and free events in time order. On CUDA it is `torch.cuda.max_memory_allocated` minus the bytes "
    "allocated before."
)
SUITE_KINDS = ("layer", "model", "merged", "vl", "engine")
LAYER_ADAPTERHUB_REASON = (
    "AdapterHub adapts layers inside the HF models it supports (via its model mixins), not a bare nn.Linear; "
    "see the model-level rows"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Returns the parsed command line."""
    parser = argparse.ArgumentParser(prog="speed", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 3 repeats (tests, smoke runs)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None, help="minimum timed repeats per row (default 7, quick 3)")
    parser.add_argument(
        "--suite-budget-s",
        type=float,
        default=None,
        help="time a suite for more repeats (up to 25) while they fit in this many seconds, and retake disturbed "
        "samples within half of it (default 20, quick 0)",
    )
    parser.add_argument(
        "--min-sample-s", type=float, default=None, help="run fast rows several steps per sample (default 0.2 s)"
    )
    parser.add_argument(
        "--suites",
        default=None,
        help="comma-separated subset of: layer (4096 and 384 layers), model (MiniLM, Llama; with AdapterHub), "
        "merged (merged per-task inference), vl (MTL-LoRA vs LoRA at VL-BART's image-text shapes: a 768 layer on "
        "512×56 tokens, a VL-BART training step), engine (whole training jobs against PEFT + Trainer, each in its "
        "own process: GLUE on MiniLM-L6, commonsense on SmolLM2-135M; needs --engine-data-dir). Default: all; with "
        "--quick all but engine",
    )
    parser.add_argument(
        "--engine-data-dir",
        default=os.environ.get("MTLLORA_DATA_DIR"),
        help="the benchmark data of the engine suite: glue/ and commonsense/ (default $MTLLORA_DATA_DIR)",
    )
    parser.add_argument(
        "--engine-jobs", default="glue,commonsense", help="comma-separated engine jobs: glue, commonsense"
    )
    parser.add_argument(
        "--engine-steps",
        type=int,
        default=None,
        help="training steps per engine row and round (default: GLUE 110, commonsense 15; the first 20 and 5, at "
        "most half, warm up)",
    )
    parser.add_argument(
        "--engine-rounds",
        type=int,
        default=None,
        help="times each engine row runs, the rows' order reversed every other round (default 2)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder")
    parser.add_argument("--no-adapterhub", action="store_true", help="do not create/run the AdapterHub venv")
    parser.add_argument(
        "--adapterhub-venv", type=Path, default=Path(".venv-adapterhub"), help="AdapterHub's own venv (created)"
    )
    args = parser.parse_args(argv)
    default_suites = [kind for kind in SUITE_KINDS if not (args.quick and kind == "engine")]
    args.suites = [name.strip() for name in args.suites.split(",") if name.strip()] if args.suites else default_suites
    unknown = sorted(set(args.suites) - set(SUITE_KINDS))
    if unknown or not args.suites:
        parser.error(f"--suites takes a comma-separated subset of {SUITE_KINDS}, got {unknown or 'nothing'}")
    args.engine_jobs = [name.strip() for name in args.engine_jobs.split(",") if name.strip()]
    unknown = sorted(set(args.engine_jobs) - set(engine.JOBS))
    if unknown or not args.engine_jobs:
        parser.error(
            f"--engine-jobs takes a comma-separated subset of {sorted(engine.JOBS)}, got {unknown or 'nothing'}"
        )
    try:
        args.device, args.dtype = pick_device(args.device, args.dtype)
    except ValueError as err:
        parser.error(str(err))
    for name in ("threads", "repeats", "engine_steps", "engine_rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    # Defaults that depend on --quick.
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.min_sample_s = args.min_sample_s if args.min_sample_s is not None else (0.0 if args.quick else 0.2)
    args.suite_budget_s = args.suite_budget_s if args.suite_budget_s is not None else (0.0 if args.quick else 20.0)
    return args


def pick_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """Returns (device, dtype) for the flags: auto means cuda + bfloat16 when CUDA is available, else cpu + fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    allowed = ("float32", "bfloat16", "float16")
    if dtype not in allowed:
        raise ValueError(f"--dtype must be auto or one of {allowed}, got {dtype!r}")
    return dev, getattr(torch, dtype)


class Log:
    """Progress lines on stderr, with seconds since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def measure_suite(suite: Suite, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    """Times and memory-profiles every runnable row of a suite; returns the suite as a JSON-able dict."""
    w = suite.workload
    log(f"{w.name}: {w.title}")
    first_call_s: dict[str, float] = {}
    peaks: dict[str, int] = {}
    for row in suite.rows:
        if row.step is None:
            continue
        try:  # the first call, profiled for memory; a row that cannot run is listed with its error, never dropped
            start = time.perf_counter()
            peaks[row.key] = peak_step_memory(row.step, args.device)
            first_call_s[row.key] = time.perf_counter() - start
        except Exception as err:
            row.step, row.status = None, f"not run: {type(err).__name__}: {err}"
            log(f"  {row.key}: {row.status}")
    steps = {row.key: row.step for row in suite.rows if row.step is not None}
    stats = measure(
        steps,
        first_call_s,
        args.repeats,
        args.min_sample_s,
        extra_budget_s=args.suite_budget_s,
        retake_budget_s=args.suite_budget_s / 2,
        progress=lambda m: log(f"  {w.name} {m}"),
    )
    for row in suite.rows:
        if row.step is not None:
            row.result = {**stats[row.key].to_dict(), "peak_mem_bytes": peaks[row.key]}
    return {
        "name": w.name,
        "title": w.title,
        "kind": w.kind,
        "tags": list(w.tags),
        "info": w.info,
        "rows": [
            {
                "key": row.key,
                "label": row.label,
                "group": row.group,
                "status": row.status,
                "note": row.note,
                "trainable_params": row.trainable_params,
                **row.result,
            }
            for row in suite.rows
        ],
    }


def fill_adapterhub(suites: list[dict[str, Any]], result: dict[str, Any] | None, reason: str | None) -> None:
    """Puts the worker's measurements (or the reason it did not run) into the model suites' AdapterHub rows."""
    for suite in suites:
        if suite["tags"] != ["train", "model"]:
            continue
        for row in suite["rows"]:
            if not row["key"].startswith("adapterhub_"):
                continue
            if result is None:
                row["status"] = f"not run: {reason}"
                continue
            row.update(result["suites"][suite["name"]][row["key"]], status="ok")
            v = result["versions"]
            row["note"] = (
                f"other process: adapters {v['adapters']}, transformers {v['transformers']}; "
                "ratios against the AdapterHub base"
            )
            if row["key"] == "adapterhub_mtl_lora":
                row["note"] += "; MTLLoRAConfig + share_parameters + MultiTask, 8 task adapters"


def run_adapterhub(args: argparse.Namespace, scale: Scale, log: Log) -> tuple[dict[str, Any] | None, str | None]:
    """Returns (worker result, None) or (None, reason) for the AdapterHub peer."""
    if args.no_adapterhub:
        return None, "skipped (--no-adapterhub)"
    try:
        python = adapterhub.ensure_venv(args.adapterhub_venv, log)
        log("AdapterHub: measuring in its own venv (transformers 4.57.x)")
        spec = {
            "suites": ["minilm", "llama"],
            "minilm_path": minilm_path(),
            "llama_config": scale.llama_config,
            "r": RANK,
            "alpha": int(ALPHA),
            "num_up": NUM_UP,
            "num_tasks": NUM_TASKS,
            "temperature": TEMPERATURE,
            "device": str(args.device),
            "dtype": str(args.dtype).removeprefix("torch."),
            "threads": args.threads,
            "repeats": args.repeats,
            "min_sample_s": args.min_sample_s,
            # Only the minimum repeats (only its own ratios are used), but retakes of disturbed samples as ours.
            "extra_budget_s": 0.0,
            "retake_budget_s": args.suite_budget_s / 2,
        }
        return adapterhub.measure(python, spec, model_batches(scale, torch.device("cpu"))), None
    except adapterhub.AdapterHubUnavailable as err:
        log(f"AdapterHub not run: {err}")
        return None, str(err)


def run_engine(args: argparse.Namespace, log: Log) -> list[dict[str, Any]]:
    """Returns each engine job measured (`speed.engine`), or its reason for not running: no data, or a package it
    needs (SmolLM2-135M for commonsense) not installed."""
    results = []
    for key in args.engine_jobs:
        job = engine.JOBS[key]
        status = None
        if not args.engine_data_dir:
            status = "not run: no benchmark data (--engine-data-dir or MTLLORA_DATA_DIR)"
        elif job.requires and importlib.util.find_spec(job.requires) is None:
            status = f"not run: needs {job.requires} ({job.install_hint})"
        if status:
            results.append({"job": job.key, "title": job.title, "status": status})
            continue
        steps = args.engine_steps or job.steps
        results.append(
            engine.measure_engine(
                job,
                None,
                args.engine_data_dir,
                steps,
                min(job.warmup, steps // 2),
                args.threads,
                log=log,
                rounds=args.engine_rounds,
            )
        )
    return results


def cpu_name() -> str:
    """Returns the CPU model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> Path:
    """Runs the benchmark; writes `<out>/<host>-<date>[-quick].{json,md,png}` (no figure when only the engine suite
    ran) and returns the JSON path."""
    args = parse_args(argv)
    log = Log()
    device, dtype = args.device, args.dtype
    torch.set_num_threads(args.threads)
    scale = QUICK if args.quick else FULL
    started = datetime.datetime.now()
    host = socket.gethostname().split(".")[0] or "host"
    log(f"device {device}, {dtype}, {args.threads} threads, {args.repeats} repeats; host {host}")

    # AdapterHub runs in another process, before ours, so that its install never overlaps our timings.
    ah_result, ah_reason = run_adapterhub(args, scale, log) if "model" in args.suites else (None, None)

    suites: list[dict[str, Any]] = []
    if "layer" in args.suites:
        for i, dim in enumerate(scale.layer_dims):
            w = layer_workload(dim, scale.layer_batch, scale.layer_seq, device, dtype, large=i == 0)
            suites.append(measure_suite(Suite(w, training_rows(w, LAYER_ADAPTERHUB_REASON)), args, log))
    if "model" in args.suites or "merged" in args.suites:
        for w in model_workloads(scale, device, dtype):
            if w.kind == "train" and "model" in args.suites:
                suites.append(measure_suite(Suite(w, training_rows(w, ah_reason)), args, log))
            elif w.kind == "inference" and "merged" in args.suites:
                suites.append(measure_suite(Suite(w, inference_rows(w)), args, log))
    if "vl" in args.suites:
        for w in vl_workloads(scale, device, dtype):
            suites.append(measure_suite(Suite(w, vl_training_rows(w)), args, log))
    engine_suite = run_engine(args, log) if "engine" in args.suites else None
    fill_adapterhub(suites, ah_result, ah_reason)
    for suite in suites:
        report.add_ratios(suite)

    data = {
        "meta": {
            "host": host,
            "date": started.strftime("%Y-%m-%d"),
            "started": started.isoformat(timespec="seconds"),
            "duration_s": time.perf_counter() - log.start,
            "command": " ".join(["python -m speed", *(argv if argv is not None else sys.argv[1:])]),
            "versions": {
                "mtllora": mtllora.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "python": platform.python_version(),
                "adapterhub": ah_result["versions"] if ah_result else None,
            },
            "device": str(device),
            "cpu": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "dtype": str(dtype).removeprefix("torch."),
            "threads": args.threads,
            "quick": args.quick,
            "repeats": args.repeats,
            "min_sample_s": args.min_sample_s,
            "suite_budget_s": args.suite_budget_s,
        },
        "method": {"timing": TIMING_METHOD, "memory": MEMORY_METHOD},
        "suites": suites,
    }
    if engine_suite is not None:
        data["engine"] = engine_suite
    data["targets"] = report.evaluate_targets(suites)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{host}-{data['meta']['date']}{'-quick' if args.quick else ''}"
    report.write_json(stem.with_suffix(".json"), data)
    engine_section = f"\n{engine.markdown(engine_suite)}" if engine_suite is not None else ""
    stem.with_suffix(".md").write_text(report.markdown(data) + engine_section)
    if suites:  # the step-timed suites' figure (an engine-only run has none)
        report.plot(data, stem.with_suffix(".png"))
    log(f"wrote {stem}.json, .md{', .png' if suites else ''}")
    return stem.with_suffix(".json")
