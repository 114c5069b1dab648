"""Timing, peak-memory measurement and parameter perturbation, shared by the benchmark and its AdapterHub worker.

This file imports only torch and the standard library: the AdapterHub worker runs in another virtual environment
(where mtllora is not installed) and imports it from its path.

Every row is a closure running one step (e.g. forward + backward) that leaves nothing behind (gradients are
dropped at its end).

Memory: the first call of each step runs under the memory profiler (CPU) or with the CUDA peak counter reset.
The peak is the bytes torch allocated during the step above what was allocated when it started (activations
saved for backward, temporaries, gradients, and one-off caches such as DoRA's [out] row norms). On CUDA this is
`torch.cuda.max_memory_allocated`; on CPU torch keeps no such counter, so the step runs under `torch.profiler`
with `profile_memory=True` and the peak is the running sum of its CPU allocation (+) and free (−) events in time
order.

Timing: after the first call (and, for rows faster than `min_sample_s`, one more call to calibrate how many steps
a sample runs), each repeat times every row once, in an order rotated by one position per repeat, so drift hits
all rows alike; a row's result is the median over repeats. The stdlib `timeit` disables the garbage collector
while it times, and torch's benchmark timer synchronises the accelerator before reading the clock. Where
/proc/stat exists, a sample during which other processes used CPU time that our threads needed (more than the
idle cores could absorb) is taken again, at most twice and within a time budget; the counts are reported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
import timeit
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch.utils.benchmark import timer as synchronizing_timer

# Other processes' CPU use, in cores beyond the idle ones, above which a sample counts as disturbed (a quiet
# machine shows < 0.05 here; one busy neighbour process, ~1).
DISTURBED_CORES = 0.2
MAX_RETAKES = 2


@dataclasses.dataclass
class Stats:
    """One row's timing: per-step seconds of each repeat, steps per sample, samples retaken because other
    processes were using the CPU, and samples kept although disturbed (retakes or their budget ran out)."""

    samples_s: list[float]
    iters_per_sample: int
    retaken: int = 0
    disturbed: int = 0

    @property
    def median_s(self) -> float:
        """Median seconds per step over the repeats."""
        return statistics.median(self.samples_s)

    @property
    def iqr_s(self) -> float:
        """Interquartile range of the per-step seconds (0 with fewer than 2 samples)."""
        if len(self.samples_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples_s, n=4, method="inclusive")
        return q3 - q1

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """Returns milliseconds (median, min, IQR, every sample), steps per sample and the retake counts."""
        return {
            "median_ms": self.median_s * 1e3,
            "min_ms": min(self.samples_s) * 1e3,
            "iqr_ms": self.iqr_s * 1e3,
            "samples_ms": [s * 1e3 for s in self.samples_s],
            "iters_per_sample": self.iters_per_sample,
            "retaken": self.retaken,
            "disturbed": self.disturbed,
        }


def time_steps(step: Callable[[], object], number: int) -> float:
    """Returns the seconds per call of `step` over `number` back-to-back calls (gc off, accelerator synced)."""
    return timeit.Timer(step, timer=synchronizing_timer).timeit(number) / number


def _machine_busy() -> tuple[float, int] | None:
    """Returns (CPU seconds all processes have used, number of CPUs) from /proc/stat, or None without it."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = [int(field) for field in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3].isdigit())
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), cpus


def timed_sample(step: Callable[[], object], number: int) -> tuple[float, bool]:
    """Returns (seconds per call over `number` calls, whether other processes used the CPU our threads needed)."""
    before, ours = _machine_busy(), time.process_time()
    seconds = time_steps(step, number)
    after, ours = _machine_busy(), time.process_time() - ours
    if before is None or after is None:
        return seconds, False
    spare = max(0, after[1] - torch.get_num_threads())
    others = (after[0] - before[0] - ours) / (seconds * number)
    return seconds, others > spare + DISTURBED_CORES


def peak_step_memory(step: Callable[[], object], device: torch.device) -> int:
    """Returns the peak bytes torch allocated during one call of `step`, above the bytes allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda only, got device {device}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(
    steps: Mapping[str, Callable[[], object]],
    first_call_s: Mapping[str, float],
    repeats: int,
    min_sample_s: float,
    extra_budget_s: float = 0.0,
    retake_budget_s: float = 0.0,
    max_repeats: int = 25,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Returns Stats per step name, from interleaved, rotated timed repeats of steps already called once (their
    first call took `first_call_s`): at least `repeats`, more (up to `max_repeats`) while they fit in
    `extra_budget_s`, so cheap workloads get tighter medians at a bounded cost; disturbed samples are retaken
    while the retakes fit in `retake_budget_s`."""
    if repeats < 1:
        raise ValueError(f"need repeats >= 1, got {repeats}")
    names = list(steps)
    # A fast row's first call is dominated by one-off work: time one more call to size its samples.
    estimate = {
        name: time_steps(steps[name], 1) if first_call_s[name] < min_sample_s else first_call_s[name] for name in names
    }
    number = {name: max(1, math.ceil(min_sample_s / max(estimate[name], 1e-9))) for name in names}
    round_s = sum(number[name] * estimate[name] for name in names)
    total = max(repeats, min(max_repeats, math.floor(extra_budget_s / max(round_s, 1e-9))))
    stats = {name: Stats([], number[name]) for name in names}
    retake_s = 0.0
    for rep in range(total):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            row = stats[name]
            seconds, disturbed = timed_sample(steps[name], row.iters_per_sample)
            for _ in range(MAX_RETAKES):
                cost = seconds * row.iters_per_sample
                if not disturbed or retake_s + cost > retake_budget_s:
                    break
                retake_s += cost
                row.retaken += 1
                seconds, disturbed = timed_sample(steps[name], row.iters_per_sample)
            row.samples_s.append(seconds)
            row.disturbed += disturbed
        if progress is not None:
            progress(f"repeat {rep + 1}/{total}")
    return stats


def perturb_trainable(model: torch.nn.Module, seed: int) -> None:
    """Adds small seeded noise to every trainable parameter, so that no adapter path is all zeros (B = 0 at init)
    and every row computes with non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda item: item[0]):
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
