"""Ratios, targets and the three outputs of a benchmark run: JSON, a markdown table and a PNG plot.

Every ratio is a ratio of medians from the same run and the same process. "Overhead" is a row's median minus the
frozen base's median of the same suite; AdapterHub rows, measured in another process, are compared with the
AdapterHub base and AdapterHub LoRA of that process.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Target:
    """`num` / `den` ≤ `limit`, each side a (row key, quantity) with quantity total | overhead | memory. Judged
    PASS/MISS in the suites carrying every tag of `scope` and none of `exclude`; shown as info in other suites that
    measured both rows."""

    key: str
    text: str
    num: tuple[str, str]
    den: tuple[str, str]
    limit: float
    scope: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    def applies_to(self, tags: Sequence[str]) -> bool:
        """True when the target is judged in a suite with these tags."""
        return set(self.scope) <= set(tags) and not set(self.exclude) & set(tags)


# The VL suites (tag "vl") judge MTL-LoRA against LoRA only; the other training targets keep their suites.
TARGETS = [
    Target("lora_vs_peft", "our LoRA overhead ≤ 0.7× PEFT LoRA overhead",
           ("lora", "overhead"), ("peft_lora", "overhead"), 0.7, ("train",), ("vl",)),
    Target("mtl_vs_lora_total", "MTL-LoRA total ≤ 1.10× our LoRA total",
           ("mtl_lora", "total"), ("lora", "total"), 1.10, ("train",)),
    Target("mtl_vs_lora_overhead", "MTL-LoRA overhead ≤ 1.25× our LoRA overhead",
           ("mtl_lora", "overhead"), ("lora", "overhead"), 1.25, ("train",)),
    Target("mtl_vs_official", "MTL-LoRA total ≤ 0.9× official formulation",
           ("mtl_lora", "total"), ("official_mtl_lora", "total"), 0.9, ("train",), ("vl",)),
    Target("mtl_vs_adapterhub", "MTL-LoRA ≤ 0.8× AdapterHub MTL-LoRA (each ÷ its own LoRA)",
           ("mtl_lora", "total"), ("adapterhub_mtl_lora", "total"), 0.8, ("train", "model"), ("vl",)),
    Target("dora_vs_peft", "DoRA total ≤ 0.6× PEFT DoRA total (4096 layer)",
           ("dora", "total"), ("peft_dora", "total"), 0.6, ("large",)),
    Target("dora_vs_lora", "DoRA total ≤ 1.15× our LoRA total (4096 layer)",
           ("dora", "total"), ("lora", "total"), 1.15, ("large",)),
    Target("multilora_vs_lora24", "MultiLoRA 3×r=8 total ≤ 1.15× LoRA r=24 total",
           ("multilora", "total"), ("lora_r24", "total"), 1.15, ("train",), ("vl",)),
    Target("merged_vs_base", "merged per-task inference ≤ 1.02× base",
           ("mtl_lora_merged", "total"), ("base", "total"), 1.02, ("inference",)),
    Target("mtl_memory", "MTL-LoRA peak memory ≤ 1.1× LoRA peak",
           ("mtl_lora", "memory"), ("lora", "memory"), 1.1, ("train",)),
    # Tasks interleaved, sorted inside the layer (the default, `sort_tasks`): LoRA's cost whatever the batch's order.
    Target("mtl_sorted_vs_lora_total", "MTL-LoRA, tasks interleaved (default): total ≤ 1.10× our LoRA total",
           ("mtl_lora_interleaved_sorted", "total"), ("lora", "total"), 1.10, ("vl",)),
    Target("mtl_sorted_memory", "MTL-LoRA, tasks interleaved (default): peak memory ≤ 1.1× LoRA peak",
           ("mtl_lora_interleaved_sorted", "memory"), ("lora", "memory"), 1.1, ("vl",)),
]  # fmt: skip


def add_ratios(suite: dict[str, Any]) -> None:
    """Adds overhead_ms, vs_base, overhead_vs_lora and mem_vs_lora to every measured row of a suite dict (in
    place). AdapterHub rows take their base from the AdapterHub process."""
    rows = {row["key"]: row for row in suite["rows"]}

    def ok(key: str) -> dict[str, Any] | None:
        row = rows.get(key)
        return row if row is not None and row["status"] == "ok" else None

    for row in suite["rows"]:
        if row["status"] != "ok":
            continue
        ah = row["key"].startswith("adapterhub_")
        base, lora = ok("adapterhub_base" if ah else "base"), ok("adapterhub_lora" if ah else "lora")
        if base is not None:
            row["overhead_ms"] = row["median_ms"] - base["median_ms"]
            row["vs_base"] = row["median_ms"] / base["median_ms"]
        if lora is not None and suite["kind"] == "train":
            lora_overhead = lora["median_ms"] - base["median_ms"] if base is not None else None
            if lora_overhead and lora_overhead > 0 and "overhead_ms" in row:
                row["overhead_vs_lora"] = row["overhead_ms"] / lora_overhead
            if lora.get("peak_mem_bytes"):
                row["mem_vs_lora"] = row["peak_mem_bytes"] / lora["peak_mem_bytes"]


def _ratio(
    target: Target, rows: dict[str, dict[str, Any]], median: Callable[[str], float]
) -> tuple[float | None, str | None]:
    """Returns (num / den, None) for one target in one suite, with `median(key)` giving each row's time (the
    measured median, or a bootstrap draw), or (None, reason) when a row is missing or a quantity is not positive."""

    def quantity(key: str, what: str) -> tuple[float | None, str | None]:
        row = rows.get(key)
        if row is None or row["status"] != "ok":
            status = "no such row" if row is None else row["status"].removeprefix("not run: ")
            return None, f"not run: {key}: {status}"
        if what == "memory":
            return row["peak_mem_bytes"], None
        value = median(key)
        if what == "overhead":
            base = "adapterhub_base" if key.startswith("adapterhub_") else "base"
            if rows.get(base, {}).get("status") != "ok":
                return None, f"not run: {base} missing"
            value -= median(base)
        if value <= 0:
            # An overhead at or below zero is the base's time within noise: no meaningful ratio.
            return None, f"not run: {key} {what} is {value:.3g} ≤ 0 (within noise)"
        return value, None

    (num, why_num), (den, why_den) = quantity(*target.num), quantity(*target.den)
    if num is None or den is None:
        return None, why_num or why_den
    if target.key == "mtl_vs_adapterhub":
        # Different processes (and transformers versions): compare each MTL-LoRA relative to its own LoRA.
        (ours, why_ours), (theirs, why_theirs) = quantity("lora", "total"), quantity("adapterhub_lora", "total")
        if ours is None or theirs is None:
            return None, why_ours or why_theirs
        num, den = num / ours, den / theirs
    return num / den, None


def evaluate_targets(suites: list[dict[str, Any]], draws: int = 1000) -> list[dict[str, Any]]:
    """Returns one entry per (target, suite): the ratio of medians, a 95 % bootstrap interval (each row's samples
    resampled `draws` times, seeded), the limit and PASS | MISS in the target's scope, "info" in other suites
    that measured both sides, or "not run: ..." in scope when a side is missing or not positive."""
    rng = random.Random(0)
    results = []
    for suite in suites:
        rows = {row["key"]: row for row in suite["rows"]}
        measured = {key: row["samples_ms"] for key, row in rows.items() if row["status"] == "ok"}
        boot = [
            {key: statistics.median(rng.choices(samples, k=len(samples))) for key, samples in measured.items()}
            for _ in range(draws)
        ]
        for target in TARGETS:
            in_scope = target.applies_to(suite["tags"])
            value, reason = _ratio(target, rows, lambda key, rows=rows: rows[key]["median_ms"])
            if value is None and not in_scope:
                continue
            entry: dict[str, Any] = {
                "target": target.key,
                "text": target.text,
                "suite": suite["name"],
                "limit": target.limit,
            }
            if value is None:
                entry["result"] = reason
                results.append(entry)
                continue
            entry["value"] = value
            entry["result"] = ("PASS" if value <= target.limit else "MISS") if in_scope else "info"
            if target.num[1] != "memory":
                values = sorted(v for draw in boot if (v := _ratio(target, rows, draw.__getitem__)[0]) is not None)
                if values:
                    entry["ci95"] = [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]
            base = rows.get("base")
            if target.num[1] == target.den[1] == "total" and target.key != "mtl_vs_adapterhub" and base:
                # What an adapter costing nothing over the frozen base would score: a total-time target below this
                # is out of reach for any implementation.
                entry["zero_overhead_bound"] = base["median_ms"] / rows[target.den[0]]["median_ms"]
            results.append(entry)
    order = {target.key: i for i, target in enumerate(TARGETS)}
    return sorted(results, key=lambda entry: order[entry["target"]])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes the run's data (meta, suites with rows, targets) as indented JSON."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def summary_table(suites: list[dict[str, Any]]) -> list[str]:
    """Returns the markdown lines of a one-row-per-configuration table: each suite's median ms and × its base."""
    lines = ["## Summary: median ms (× frozen base of the same process)", ""]
    lines += ["| row | " + " | ".join(s["name"] for s in suites) + " |", "|---|" + "---:|" * len(suites)]
    labels: dict[str, str] = {}
    for suite in suites:
        for row in suite["rows"]:
            labels.setdefault(row["key"], row["label"])
    for key, label in labels.items():
        cells = []
        for suite in suites:
            row = next((r for r in suite["rows"] if r["key"] == key), None)
            if row is None:
                cells.append("")
            elif row["status"] != "ok":
                cells.append("not run")
            else:
                cells.append(f"{row['median_ms']:.1f} ({row.get('vs_base', float('nan')):.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """Returns the markdown report: how it was measured, one table per suite, and the targets table (the header
    alone when no step-timed suite ran, as in an engine-only run)."""
    meta = data["meta"]
    lines = [
        f"# Adapter benchmark — {meta['host']}, {meta['date']}",
        "",
        f"torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
        f"peft {meta['versions']['peft']}; device {meta['device']} ({meta['cpu']}), {meta['dtype']}, "
        f"{meta['threads']} threads; at least {meta['repeats']} interleaved repeats per suite (more where they fit "
        f"in {meta['suite_budget_s']:g} s); wall time {meta['duration_s']:.0f} s. Command: `{meta['command']}`.",
        "",
    ]
    if not data["suites"]:
        return "\n".join(lines)
    lines += [
        data["method"]["timing"],
        "",
        data["method"]["memory"],
        "",
    ]
    lines += [*summary_table(data["suites"]), ""]
    for suite in data["suites"]:
        measured = [row for row in suite["rows"] if row["status"] == "ok"]
        repeats = "/".join(map(str, sorted({len(row["samples_ms"]) for row in measured})))
        retaken, disturbed = (sum(row.get(k, 0) for row in measured) for k in ("retaken", "disturbed"))
        lines += [
            f"## {suite['title']}",
            "",
            f"{repeats} repeats per row; {retaken} samples retaken because other processes were using the CPU, "
            f"{disturbed} kept although disturbed.",
            "",
        ]
        if suite["kind"] == "train":
            lines += [
                "| row | median ms | IQR ms | × base | overhead ms | overhead ÷ LoRA's | peak MiB | peak ÷ LoRA's "
                "| trainable | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
        else:
            lines += ["| row | median ms | IQR ms | × base | peak MiB | note |", "|---|---:|---:|---:|---:|---|"]
        for row in suite["rows"]:
            note = row["note"] if row["status"] == "ok" else f"**{row['status']}**"
            if row["status"] != "ok":
                cells = ["—"] * (8 if suite["kind"] == "train" else 4)
            else:
                mib = row["peak_mem_bytes"] / 2**20
                cells = [_fmt(row["median_ms"], ".1f"), _fmt(row["iqr_ms"], ".1f"), _fmt(row.get("vs_base"), ".3f")]
                if suite["kind"] == "train":
                    cells += [
                        _fmt(row.get("overhead_ms"), ".1f"),
                        _fmt(row.get("overhead_vs_lora"), ".2f"),
                        _fmt(mib, ".1f"),
                        _fmt(row.get("mem_vs_lora"), ".3f"),
                        f"{row['trainable_params']:,}",
                    ]
                else:
                    cells += [_fmt(mib, ".1f")]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {note} |")
        lines.append("")
    lines += [
        "## Targets",
        "",
        "Ratios of medians; PASS/MISS where the target applies, info elsewhere; in brackets the 95 % bootstrap "
        "interval of the ratio (every row's samples resampled): a verdict whose interval contains the limit is within "
        'this run\'s timing noise. A total-time ratio marked "≥ x at zero overhead" cannot reach its target: x is '
        "what an adapter costing nothing over the frozen base would score.",
        "",
    ]
    suite_names = [s["name"] for s in data["suites"]]
    by_target: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in data["targets"]:
        by_target.setdefault(entry["text"], {})[entry["suite"]] = entry
    lines += ["| target | " + " | ".join(suite_names) + " |", "|---|" + "---|" * len(suite_names)]
    for text, entries in by_target.items():
        cells = []
        for name in suite_names:
            entry = entries.get(name)
            if entry is None:
                cells.append("")
            elif "value" in entry:
                verdict = "(info)" if entry["result"] == "info" else f"**{entry['result']}**"
                ci = entry.get("ci95")
                interval = f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""
                bound = entry.get("zero_overhead_bound", 0.0)
                reach = f" (≥ {bound:.3f} at zero overhead)" if bound > entry["limit"] else ""
                cells.append(f"{entry['value']:.3f}{interval} {verdict}{reach}")
            else:
                cells.append(entry["result"])
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


GROUP_COLORS = {
    "floor": "#7f7f7f",
    "ours": "#1f77b4",
    "peer": "#ff7f0e",
    "official": "#d62728",
    "adapterhub": "#9467bd",
}


def _quartiles(samples: list[float], base_ms: float) -> tuple[float, float]:
    """Returns the first and third quartiles of `samples` divided by `base_ms` (the median when only one sample)."""
    if len(samples) < 2:
        return samples[0] / base_ms, samples[0] / base_ms
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1 / base_ms, q3 / base_ms


def plot(data: dict[str, Any], path: Path) -> None:
    """Writes a PNG with one panel per suite: each measured row's median time ÷ its base (1.0 = the floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    suites = data["suites"]
    cols = 2
    nrows = (len(suites) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(15, 4.2 * nrows), squeeze=False)
    for ax, suite in zip(axes.flat, suites, strict=False):
        rows = [r for r in suite["rows"] if r["status"] == "ok" and "vs_base" in r][::-1]
        values = [r["vs_base"] for r in rows]
        # Whiskers: each row's interquartile range, on the same scale (median ÷ base).
        quartiles = [_quartiles(r["samples_ms"], r["median_ms"] / r["vs_base"]) for r in rows]
        whiskers = [[v - q1 for v, (q1, _) in zip(values, quartiles, strict=True)],
                    [q3 - v for v, (_, q3) in zip(values, quartiles, strict=True)]]  # fmt: skip
        bars = ax.barh(
            [r["label"] for r in rows],
            values,
            color=[GROUP_COLORS[r["group"]] for r in rows],
            xerr=whiskers,
            error_kw={"elinewidth": 0.8, "capsize": 2},
        )
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(suite["title"], fontsize=10)
        ax.set_xlabel("median time ÷ frozen base (same process); whiskers: interquartile range")
        ax.set_xlim(0, max((q3 for _, q3 in quartiles), default=1.0) * 1.15)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(suites) :]:
        ax.axis("off")
    handles = [Patch(color=c, label=g) for g, c in GROUP_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    meta = data["meta"]
    fig.suptitle(f"mtllora adapter benchmark — {meta['host']} {meta['date']}, {meta['device']} {meta['dtype']}")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
