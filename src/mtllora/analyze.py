"""`python -m mtllora.analyze RUN_DIR [RUN_DIR ...] --out DIR`: the paper's motivating analysis, measured on
trained runs (figures as PNG and the numbers behind them in `analysis.json`).

- **Task separation in the adapter's rank space.** For a seeded sample of every task's dev examples, each adapted
  layer's low-rank representation D_t x (D_t = the layer's down-projection for the sample's task as a plain LoRA,
  `lora_factors`: A for LoRA, Λ_t A for MTL-LoRA), its input x in the trained model, and for reference its input in
  the frozen base model (every adapter bypassed: the same for all runs of one base model), each mean-pooled over
  real tokens (pooling before D_t is exact: D_t is linear). Per layer and space: the cross-validated accuracy of a
  linear probe that predicts the task, and the between/within-task variance ratio tr(S_B) / tr(S_W); one PCA
  projection per run and space, coloured by task.
- **What MTL-LoRA learned.** Per layer that mixes up-projections and has per-task Λ_t: the mixing weights
  softmax(w_t/τ) (task × up-projection) and the cosine similarity between tasks' flattened Λ_t.

The numeric functions (`probe_accuracy`, `variance_ratio`, `lambda_cosine_similarity`, `masked_mean`,
`rank_space`, `learned_mixing`) take arrays or a model and do no I/O. Runs are read back with `runs.load_run`;
the dev examples come from the run's benchmark (`eval_datasets`, tokenised dev sets with a `task_ids` column).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from torch import nn

from .adapters import AdapterLinear, adapter_layers, get_adapter_config
from .rundir import stored_config
from .runs import TrainedRun, load_run

ANALYSIS_FILE = "analysis.json"
# rank_space: D_t x in the trained model; input: x in the trained model (earlier adapters changed it); base_input: x
# in the frozen base model (every adapter bypassed), the same for every run of one base model and example sample.
SPACES = ("rank_space", "input", "base_input")
SPACE_NAMES = {"rank_space": "rank space", "input": "layer input", "base_input": "base model's input"}
SPACE_STYLES = {"rank_space": "-", "input": "--", "base_input": ":"}


# --- numbers (no I/O) ---------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Returns the mean of x [batch, tokens, d] over the tokens where attention_mask [batch, tokens] is 1, as
    [batch, d] in fp32 (padding must not pull the representation of short examples towards the pad state)."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (x.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def rank_space(pooled: torch.Tensor, downs: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Returns D_t x for each row: pooled [N, in], downs [T, k, in] (one down-projection per task), task_ids [N];
    result [N, k]."""
    out = pooled.new_empty(pooled.shape[0], downs.shape[1])
    for task in task_ids.unique().tolist():
        rows = task_ids == task
        out[rows] = pooled[rows] @ downs[task].to(pooled.dtype).t()
    return out


def _check_labelled(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features [N, d] and labels [N], got {features.shape} and {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"task separation needs at least 2 tasks, got labels {np.unique(labels).tolist()}")
    return features, labels


def probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Returns the mean held-out accuracy of a linear probe (standardised features, multinomial logistic
    regression) that predicts `labels` from `features`, over stratified `folds`-fold cross-validation shuffled with
    `seed`: how linearly separable the tasks are in this space (chance is the largest task's share)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    features, labels = _check_labelled(features, labels)
    values, counts = np.unique(labels, return_counts=True)
    if counts.min() < folds:
        raise ValueError(
            f"label {values[counts.argmin()].item()!r} has {counts.min()} examples, fewer than folds={folds}: "
            f"every fold needs one of each"
        )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: these fits are small, and threaded BLAS made them 10× slower on a shared 2-core machine.
    with threadpool_limits(limits=1):
        return float(cross_val_score(probe, features, labels, cv=cv).mean())


def variance_ratio(features: np.ndarray, labels: np.ndarray) -> float:
    """Returns tr(S_B) / tr(S_W): the scatter of the task means around the overall mean (each weighted by its
    count) over the scatter of the examples around their task's mean. Large when tasks sit apart and tight."""
    features, labels = _check_labelled(features, labels)
    overall = features.mean(axis=0)
    between = within = 0.0
    for label in np.unique(labels):
        group = features[labels == label]
        center = group.mean(axis=0)
        between += len(group) * float(((center - overall) ** 2).sum())
        within += float(((group - center) ** 2).sum())
    if within == 0.0:
        raise ValueError("every example equals its task's mean: the within-task scatter is 0, the ratio undefined")
    return between / within


def lambda_cosine_similarity(lambdas: torch.Tensor | np.ndarray) -> np.ndarray:
    """Returns the [T, T] cosine similarity of the tasks' flattened Λ_t (lambdas [T, r, r], or [T, r] diagonal)."""
    flat = torch.as_tensor(lambdas).detach().double().flatten(1)
    norms = flat.norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError(f"Λ of task {int((norms == 0).nonzero()[0])} is all zeros: its cosine is undefined")
    unit = flat / norms[:, None]
    return (unit @ unit.t()).numpy()


def learned_mixing(model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """Returns {layer: {"mixing_weights": [T, n] softmax(w_t/τ), "lambda_cosine": [T, T]}} for every adapter layer
    with learned per-task mixing weights and Λ_t (MTL-LoRA); empty for methods without them. The weights are the
    layer's own `mixing_weights()`, so the figure shows what forward uses."""
    learned = {}
    for name, layer in adapter_layers(model):
        if hasattr(layer, "mixing_weights") and hasattr(layer, "lambdas"):
            with torch.no_grad():
                learned[name] = {
                    "mixing_weights": layer.mixing_weights().double().cpu().numpy(),
                    "lambda_cosine": lambda_cosine_similarity(layer.lambdas().cpu()),
                }
    return learned


def layer_downs(layer: AdapterLinear, num_tasks: int) -> torch.Tensor:
    """Returns the layer's down-projection for every task as [T, k, in] (the same one T times for a task-agnostic
    method): the `D` of its plain-LoRA form, `lora_factors`."""
    with torch.no_grad():
        if not layer.task_aware:
            return layer.lora_factors()[0].detach().expand(num_tasks, -1, -1)
        return torch.stack([layer.lora_factors(t)[0].detach() for t in range(num_tasks)])


def separation(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> dict[str, float]:
    """Returns the probe accuracy and the variance ratio of one space."""
    return {
        "probe_accuracy": probe_accuracy(features, labels, folds, seed),
        "variance_ratio": variance_ratio(features, labels),
    }


# --- reading runs -------------------------------------------------------------------------------------------------


def dev_sample(run: TrainedRun, per_task: int, seed: int) -> Dataset:
    """Returns a tokenised sample of at most `per_task` dev examples of every task of the run (the task's first dev
    set, e.g. MNLI matched), drawn with `seed`, with its `task_ids` column and without labels."""
    benchmark = run.benchmark
    if benchmark is None or not hasattr(benchmark, "eval_datasets"):
        name = "an adapter file alone" if benchmark is None else f"benchmark {benchmark.name!r}"
        raise ValueError(
            f"{run.source}: {name} has no tokenised dev sets (eval_datasets) to analyse; give a run directory of a "
            f"classification benchmark such as GLUE"
        )
    benchmark.check_inputs()  # a missing dev file is an error naming it (the stored data path may be elsewhere)
    first_set: dict[str, Any] = {}
    for task, dataset in benchmark.eval_datasets(run.tokenizer).values():
        first_set.setdefault(task, dataset)
    rng = np.random.default_rng(seed)
    parts = []
    for task in run.tasks:
        dataset = first_set[task]
        rows = np.sort(rng.permutation(len(dataset))[:per_task])
        parts.append(dataset.select(rows))
    return concatenate_datasets(parts).remove_columns("labels")


def collect_pooled_inputs(
    run: TrainedRun, dataset: Dataset, batch_size: int, bypass_adapters: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Runs the model over `dataset` and returns ({adapter layer: mean-pooled input [N, in]}, task ids [N]),
    captured with forward hooks on the adapter layers. `bypass_adapters`: every adapter layer outputs its base
    layer's output instead, so the inputs are the frozen base model's."""
    layers = dict(adapter_layers(run.model))
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    state: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def capture(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            x, mask = args[0], state["mask"]
            if x.shape[:2] != mask.shape:
                raise ValueError(
                    f"{name} sees inputs of shape {tuple(x.shape)}, not [batch, tokens, in] with the batch's "
                    f"attention mask {tuple(mask.shape)}: its tokens cannot be mean-pooled"
                )
            pooled[name].append(masked_mean(x, mask).cpu())
            return module.base_layer(x) if bypass_adapters else None

        return capture

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    collate = run.benchmark.collator(run.tokenizer)
    device = next(run.model.parameters()).device
    task_ids = []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                batch = {k: v.to(device) for k, v in batch.items()}
                state["mask"] = batch["attention_mask"]
                run.model(**batch)
                task_ids.append(batch["task_ids"].cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in pooled.items()}, torch.cat(task_ids)


def run_label(run: TrainedRun) -> str:
    """Returns the method's label in the run's stored config (e.g. "MTL-LoRA"), else the run directory's name."""
    config = stored_config(run.source) or {}
    return str(config.get("method", {}).get("label") or run.source.name)


def analyze_run(
    run: TrainedRun,
    per_task: int,
    folds: int,
    seed: int,
    batch_size: int,
    measured: dict[bytes, dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Returns (the run's numbers for the JSON, {layer: {space: features [N, d]}} with "task_ids" for the plots).
    `measured` caches separation numbers by content across calls: layers that share their input (query, key,
    value) and runs that share the base model are probed once."""
    dataset = dev_sample(run, per_task, seed)
    pooled, task_ids = collect_pooled_inputs(run, dataset, batch_size)
    base, _ = collect_pooled_inputs(run, dataset, batch_size, bypass_adapters=True)
    labels = task_ids.numpy()
    config = get_adapter_config(run.model)
    learned = learned_mixing(run.model)
    layers_out, features = {}, {}
    measured = {} if measured is None else measured
    for name, layer in adapter_layers(run.model):
        spaces = {
            "rank_space": rank_space(pooled[name], layer_downs(layer, len(run.tasks)).cpu().float(), task_ids).numpy(),
            "input": pooled[name].numpy(),
            "base_input": base[name].numpy(),
        }
        features[name] = spaces
        entry: dict[str, Any] = {
            "rank_dim": spaces["rank_space"].shape[1],
            "input_dim": spaces["input"].shape[1],
            **{space: _measured(measured, values, labels, folds, seed) for space, values in spaces.items()},
        }
        if name in learned:
            entry.update({key: value.tolist() for key, value in learned[name].items()})
        layers_out[name] = entry
    counts = np.bincount(labels, minlength=len(run.tasks))
    adapter_params = sum(
        p.numel()
        for _, layer in adapter_layers(run.model)
        for n, p in layer.named_parameters()
        if n.startswith("lora_")
    )
    numbers = {
        "label": run_label(run),
        "method": config.method,
        "r": config.r,
        "adapter_parameters": int(adapter_params),
        "tasks": list(run.tasks),
        "examples": {task: int(c) for task, c in zip(run.tasks, counts, strict=True)},
        "chance_accuracy": float(counts.max() / counts.sum()),
        "layers": layers_out,
        "mean_over_layers": {
            space: {
                metric: float(np.mean([entry[space][metric] for entry in layers_out.values()]))
                for metric in ("probe_accuracy", "variance_ratio")
            }
            for space in SPACES
        },
    }
    if learned:
        numbers["mean_over_layers"]["lambda_cosine_off_diagonal"] = float(
            np.mean([_off_diagonal_mean(v["lambda_cosine"]) for v in learned.values()])
        )
    features["task_ids"] = labels
    return numbers, features


def _measured(
    measured: dict[bytes, dict[str, float]], features: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> dict[str, float]:
    """`separation` of `features`, computed once per distinct (features, labels, folds, seed)."""
    digest = hashlib.sha256(np.ascontiguousarray(features).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    digest.update(f"{features.shape} {folds} {seed}".encode())
    key = digest.digest()
    if key not in measured:
        measured[key] = separation(features, labels, folds, seed)
    return dict(measured[key])


def _off_diagonal_mean(matrix: np.ndarray) -> float:
    off = ~np.eye(len(matrix), dtype=bool)
    return float(np.asarray(matrix)[off].mean())


# --- figures ------------------------------------------------------------------------------------------------------


def _short_names(names: Sequence[str]) -> list[str]:
    """Layer paths without the components every path shares at the front ("encoder.encoder.layer.")."""
    parts = [name.split(".") for name in names]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[common:]) for p in parts]


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = min(columns, count)
    return -(-count // columns), columns


def plot_separation(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Probe accuracy and variance ratio per layer, one colour per run, one line style per space."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5), layout="constrained")
    for index, numbers in enumerate(results.values()):
        names = list(numbers["layers"])
        for space in SPACES:
            for ax, metric in zip(axes, ("probe_accuracy", "variance_ratio"), strict=True):
                values = [numbers["layers"][n][space][metric] for n in names]
                label = f"{numbers['label']}: {SPACE_NAMES[space]}"
                ax.plot(range(len(names)), values, SPACE_STYLES[space], color=f"C{index}", marker=".", label=label)
        axes[0].axhline(numbers["chance_accuracy"], color="grey", lw=0.8)
    for ax, title in zip(
        axes, ("task probe accuracy (cross-validated; grey: chance)", "tr(S_B) / tr(S_W)"), strict=True
    ):
        ax.set_xticks(range(len(names)), _short_names(names), rotation=90, fontsize=6)
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_pca(
    results: Mapping[str, Mapping[str, Any]], features: Mapping[str, Mapping[str, Any]], layer: int, path: Path
) -> list[str]:
    """Per run (columns), the 2-D PCA of each space (rows) at adapter layer `layer` (an index into each run's
    adapter layers), coloured by task; returns the layer used per run."""
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    task_names = list(dict.fromkeys(task for numbers in results.values() for task in numbers["tasks"]))
    fig, axes = plt.subplots(
        len(SPACES), len(results), figsize=(4.2 * len(results), 4 * len(SPACES)), squeeze=False, layout="constrained"
    )
    used = []
    for column, (key, numbers) in enumerate(results.items()):
        names = list(numbers["layers"])
        used.append(names[layer])
        entry, labels = numbers["layers"][names[layer]], features[key]["task_ids"]
        for row, space in enumerate(SPACES):
            points = PCA(n_components=2, random_state=0).fit_transform(features[key][names[layer]][space])
            ax = axes[row, column]
            for task_id, task in enumerate(numbers["tasks"]):
                rows = labels == task_id
                color = f"C{task_names.index(task)}"
                ax.scatter(points[rows, 0], points[rows, 1], s=6, alpha=0.6, color=color, label=task)
            dim = entry["rank_dim"] if space == "rank_space" else entry["input_dim"]
            ax.set_title(
                f"{numbers['label']}: {SPACE_NAMES[space]} ({dim}-d)\n{_short_names(names)[layer]}, "
                f"probe {entry[space]['probe_accuracy']:.3f}",
                fontsize=9,
            )
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, markerscale=2)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return used


def plot_layer_grid(
    numbers: Mapping[str, Any], key: str, path: Path, title: str, scale: tuple[float, float] | None = None
) -> None:
    """One heatmap per layer of `numbers["layers"][layer][key]` (mixing weights: task × up-projection; Λ cosine:
    task × task), on one colour scale: `scale`, else the range of the values."""
    import matplotlib.pyplot as plt

    names = [n for n, entry in numbers["layers"].items() if key in entry]
    matrices = [np.asarray(numbers["layers"][n][key]) for n in names]
    low, high = scale or (min(float(m.min()) for m in matrices), max(float(m.max()) for m in matrices))
    rows, columns = _grid(len(names), 4)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns + 1, 2.3 * rows + 0.6), squeeze=False, layout="constrained"
    )
    tasks = numbers["tasks"]
    for ax, short, matrix in zip(axes.flat, _short_names(names), matrices, strict=False):
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis")
        ax.set_title(short, fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=6)
        columns_are_tasks = matrix.shape == (len(tasks), len(tasks)) and key == "lambda_cosine"
        ticks = tasks if columns_are_tasks else [f"B{i + 1}" for i in range(matrix.shape[1])]
        ax.set_xticks(range(matrix.shape[1]), ticks, fontsize=6, rotation=90 if columns_are_tasks else 0)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"{numbers['label']}: {title}")
    fig.colorbar(image, ax=axes, shrink=0.5)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def analyze(
    sources: Sequence[str | Path],
    out: str | Path,
    per_task: int = 200,
    folds: int = 5,
    seed: int = 0,
    pca_layer: int = -1,
    batch_size: int = 64,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> dict[str, Any]:
    """Analyses every run in `sources`, writes the figures and `analysis.json` under `out`, and returns the JSON's
    content. Runs are keyed by their directory's name (with its parent's where two share one), never by a path of
    the machine, so the JSON can be committed; `overrides` apply to every run's stored config."""
    if per_task < folds:
        raise ValueError(f"--examples-per-task {per_task} is below --folds {folds}: every fold needs each task")
    if len(set(map(str, sources))) != len(sources):
        raise ValueError(f"a run is given twice: {list(map(str, sources))}")
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, features, measured = {}, {}, {}
    names = [Path(source).name for source in sources]
    keys = [
        name if names.count(name) == 1 else f"{Path(source).parent.name}/{name}"
        for source, name in zip(sources, names, strict=True)
    ]
    for source, key in zip(sources, keys, strict=True):
        run = load_run(source, overrides, device=device)
        count = len(list(adapter_layers(run.model)))
        if not -count <= pca_layer < count:  # checked before the minutes of analysis, not at the plot
            raise ValueError(f"--pca-layer {pca_layer} is out of range: {source} has {count} adapter layers")
        results[key], features[key] = analyze_run(run, per_task, folds, seed, batch_size, measured)
    labels = [numbers["label"] for numbers in results.values()]
    if len(set(labels)) < len(labels):  # two runs of one method (seeds, profiles): tell them apart by directory
        for key, numbers in results.items():
            numbers["label"] = f"{numbers['label']} ({Path(key).name})"
    figures = {"separation": "separation.png", "pca": "pca.png"}
    plot_separation(results, out / figures["separation"])
    pca_layers = plot_pca(results, features, pca_layer, out / figures["pca"])
    slugs: list[str] = []
    for key, numbers in results.items():
        if "lambda_cosine_off_diagonal" in numbers["mean_over_layers"]:
            slug = _slug(Path(key).name)
            slug = slug if slug not in slugs else f"{slug}-{len(slugs) + 1}"  # same directory name, other parent
            slugs.append(slug)
            numbers["figures"] = {
                "mixing_weights": f"mixing-weights-{slug}.png",
                "lambda_cosine": f"lambda-cosine-{slug}.png",
            }
            plot_layer_grid(
                numbers, "mixing_weights", out / numbers["figures"]["mixing_weights"], "softmax(w_t/τ)", (0.0, 1.0)
            )
            plot_layer_grid(numbers, "lambda_cosine", out / numbers["figures"]["lambda_cosine"], "cosine of Λ_t")
    document = {
        "settings": {
            "examples_per_task": per_task,
            "folds": folds,
            "seed": seed,
            "pca_layer": dict(zip(results, pca_layers, strict=True)),
            "pooling": "mean over attention-masked tokens",
            "probe": "StandardScaler + LogisticRegression(max_iter=2000), StratifiedKFold(shuffle=True)",
        },
        "figures": figures,
        "runs": results,
    }
    (out / ANALYSIS_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return document


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="python -m mtllora.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="trained run directories (with their adapter), and key=value "
        "overrides of their stored configs (e.g. paths.data_dir=...), anywhere",
    )
    parser.add_argument("--out", required=True, help="the folder to write the figures and analysis.json into")
    parser.add_argument("--examples-per-task", type=int, default=200, help="dev examples per task (default 200)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the probe (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example sample and the folds (default 0)")
    parser.add_argument("--pca-layer", type=int, default=-1, help="adapter layer index of the PCA plot (default -1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    args = parser.parse_intermixed_args(argv)
    # Overrides are positionals among the run directories, told apart by their "=" as in the other commands.
    runs = [item for item in args.runs if "=" not in item]
    overrides = [item for item in args.runs if "=" in item]
    if not runs:
        parser.error(f"no RUN_DIR given, only overrides: {' '.join(overrides)}")
    try:
        analyze(
            runs,
            args.out,
            args.examples_per_task,
            args.folds,
            args.seed,
            args.pca_layer,
            args.batch_size,
            overrides,
            args.device,
        )
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"mtllora.analyze: {err}")
    print(f"figures and {ANALYSIS_FILE} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
